//! Switchyard rate limiting filter: atomic tiered limits (GCRA token buckets or exact sliding
//! windows) keyed by any request attribute, exact across Envoy workers through shared data.
//!
//! Pure logic: [`config`] (parsing + validation), [`limiter`] (the per-key math), [`bucket`]
//! (the bounded shared-data layout and eviction), [`engine`] (the atomic multi-rule decision)
//! and [`response`] (headers, bodies and the [`metrics::Effects`] of a decision). [`filter`] is
//! the proxy-wasm glue: it reads, decides and hands the effects to `host::apply`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bucket;
pub mod config;
pub mod engine;
pub mod global;
pub mod limiter;
pub mod metrics;
pub mod response;
pub mod rls_proto;

#[cfg(target_arch = "wasm32")]
pub mod filter;

// The suite module links the filter crates without their entry points (feature `module` off).
#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::RateLimitRoot::default())
    });
}}

/// Parses and validates a configuration exactly as `on_configure` does.
pub fn validate_config(json: &[u8]) -> Result<(), switchyard_core::ConfigError> {
    config::parse(json).map(|_| ())
}

#[cfg(test)]
mod engine_tests;
