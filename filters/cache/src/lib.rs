//! Switchyard response cache: an RFC 9111 shared cache (with RFC 5861 stale serving) held in
//! Envoy's shared data, so a response cached by one worker is a hit on every worker.
//!
//! Pure logic: [`rfc`] (Cache-Control, storability, freshness, age), [`plan`] (what a request
//! does with the cache: serve, revalidate, forward, coalesce, purge), [`response_plan`] (what a
//! response does: store, replace after a 304, serve stale on error, invalidate), [`key`] (cache
//! keys and `Vary`), [`store`] (the bounded slot store with lru/lfu/fifo eviction), [`l1`] (each
//! worker's copies of hot entries, checked against the store on every hit), [`locks`] (request
//! coalescing), [`uncacheable`] (keys whose misses skip coalescing for a while), [`respond`] (stored and served headers), [`collect`] (bodies being collected),
//! [`config`], [`effects`] (what the decisions do, as values: local replies, header edits,
//! pauses and [`metrics`] writes). The proxy-wasm glue is `filter`: it reads what the
//! plans need, does the shared-data work they ask for and applies their effects with
//! `switchyard_core::host::apply`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod collect;
pub mod config;
pub mod effects;
pub mod entry;
// Natively (tests, the integration crate) the glue is compiled and linted but not registered.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub mod filter;
pub mod key;
pub mod l1;
pub mod metrics;
pub mod plan;
pub mod respond;
pub mod response_plan;
pub mod rfc;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod runtime;
pub mod store;
pub mod uncacheable;

/// Parses and validates a configuration exactly as `on_configure` does.
pub fn validate_config(json: &[u8]) -> Result<(), switchyard_core::ConfigError> {
    config::parse(json).map(|_| ())
}

// Only the wasm module registers the entry point: natively several filter rlibs link into one
// test binary and would export the same `_initialize`.
// The suite module links the filter crates without their entry points (feature `module` off).
#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::CacheRoot::new(id))
    });
}}
