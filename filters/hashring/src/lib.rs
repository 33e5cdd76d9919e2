#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
//! Switchyard hashring: consistent-hash upstream selection (ring, Maglev, rendezvous) with
//! weights, bounded loads, passive health and ordered fallbacks, as a proxy-wasm HTTP filter.
//!
//! Everything except [`filter`] is pure logic, tested natively: [`plan`] decides a request's
//! host choice and its [`metrics::Effects`], [`outcome`] what the end of its stream records;
//! the glue carries them out (the effects through `switchyard_core::host::apply`).

pub mod config;
pub mod filter;
pub mod hostset;
pub mod maglev;
pub mod metrics;
pub mod outcome;
pub mod output;
pub mod p2c;
pub mod plan;
pub mod rendezvous;
pub mod ring;
pub mod select;
pub mod state;
pub mod table;
pub mod walk;

pub use config::Config;

/// Parses and validates a configuration exactly as `on_configure` does.
pub fn validate_config(json: &[u8]) -> Result<(), switchyard_core::ConfigError> {
    Config::parse(json).map(|_| ())
}

/// The primary host of a key value under `config`, ignoring health and load: what every Envoy
/// running this configuration picks for the key. Builds the table, so it is meant for tools and
/// tests, not for request paths.
pub fn primary_host(config: &Config, key_value: &str) -> Option<String> {
    let table = table::Table::for_config(config, &config.hosts);
    let hash = switchyard_core::hash::stable_hash64(key_value.as_bytes());
    table
        .primary(hash)
        .and_then(|i| config.hosts.get(i))
        .map(|h| h.address.clone())
}

// The suite module links the filter crates without their entry points (feature `module` off).
#[cfg(all(target_arch = "wasm32", feature = "module"))]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::<filter::HashringRoot>::default()
    });
}}
