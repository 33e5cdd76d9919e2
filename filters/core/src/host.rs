//! Thin glue between the pure logic and the proxy-wasm host. Nothing here holds logic worth
//! testing natively; it is exercised by the module and Envoy integration tests.

use crate::request::RequestView;
use crate::shared::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::{LogLevel, Status};

/// Process-wide shared data of the Envoy the module runs in.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(status_error)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(status_error)
    }
}

fn status_error(s: Status) -> StoreError {
    match s {
        Status::CasMismatch => StoreError::CasMismatch,
        other => StoreError::Other(format!("{other:?}")),
    }
}

/// Sets up logging for a filter's VM: routes the `log` crate to Envoy, logs panics at critical
/// level with the filter's name (a panic aborts the VM; the log line is what remains), and logs
/// the version once.
pub fn init_vm(filter: &'static str, version: &'static str) {
    proxy_wasm::set_log_level(LogLevel::Trace);
    std::panic::set_hook(Box::new(move |info| {
        let _ = hostcalls::log(
            LogLevel::Critical,
            &format!("switchyard {filter} panicked: {info}"),
        );
    }));
    log::info!("switchyard {filter} {version} loaded");
}

/// Current host time in nanoseconds since the Unix epoch (Envoy's clock, per worker).
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The downstream peer address as Envoy reports it (`source.address`).
pub fn source_address() -> Option<String> {
    hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Builds the request view from the current request's headers; the peer address is fetched
/// only if a matcher or key asks for it.
pub fn request_view<C: HttpContext + ?Sized>(ctx: &C) -> RequestView {
    RequestView::from_headers_lazy(ctx.get_http_request_headers(), source_address)
}

/// Reads the plugin configuration bytes (empty if none).
pub fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}
