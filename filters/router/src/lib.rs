//! Switchyard router: decides where each request goes from a JSON route table (first match
//! wins), with weighted and sticky canaries, rewrites, redirects, direct responses, mirroring
//! and live reload of the table from an HTTP endpoint.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod filter;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod runtime;
pub mod table;

#[cfg(test)]
mod plan_tests;
#[cfg(test)]
mod tests;

// Only the wasm module registers the entry point: natively several filter rlibs link into one
// test binary and would export the same `_initialize`.
// The suite module links the filter crates without their entry points (feature `module` off).
#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::RouterRoot::new(context_id))
    });
}}

/// Parses and validates a plugin configuration exactly as `on_configure` does.
pub fn validate_config(json: &[u8]) -> Result<(), switchyard_core::ConfigError> {
    config::parse_router_config(json).map(|_| ())
}
