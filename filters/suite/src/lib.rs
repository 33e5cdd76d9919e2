//! The Switchyard suite: any subset of the filters as stages of one proxy-wasm module
//! (`dist/switchyard.wasm`), in the chain order ratelimit → router → cache → hashring.
//!
//! One VM crossing per callback instead of one per filter, and the stages share one request
//! view, one clock read and the routing record (see `switchyard_core::stages`). Each stage is
//! the unchanged filter crate; its configuration is exactly that filter's standalone
//! configuration, nested under `stages.<filter>`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;

#[cfg(target_arch = "wasm32")]
mod filter;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::SuiteRoot::new(context_id))
    });
}}

/// Parses and validates a suite configuration (every stage's too) exactly as `on_configure`
/// does.
pub fn validate_config(json: &[u8]) -> Result<(), switchyard_core::ConfigError> {
    config::parse(json).map(|_| ())
}
