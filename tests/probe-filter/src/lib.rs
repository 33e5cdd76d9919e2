//! The probe: a small proxy-wasm filter that exercises every host facility the Switchyard filters
//! use, driven by its JSON configuration and by request headers. It is the fixture of the wasmtime
//! test host (`switchyard-wasmhost`) and, with `{"mode":"noop"}`, the benchmark's no-op filter.
//!
//! Configuration: `{"mode":"noop"}` continues every callback and does nothing else;
//! `{"mode":"probe", "tick_ms": 1000, "queue": "probe", "call_timeout_ms": 500}` (all but `mode`
//! optional) reacts to these request headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-probe-reply: <status>` | local reply with that status, body `probe local reply\n` |
//! | `x-probe-count: <name>` | CAS-increments shared key `switchyard.probe.count.<name>`; the new value goes upstream and back as `x-probe-counted` |
//! | `x-probe-add: <name>=<value>` | adds a request header |
//! | `x-probe-remove: <name>` | removes a request header |
//! | `x-probe-property: <a.b>` | answers the property's value as response header `x-probe-property-value` |
//! | `x-probe-call: <cluster>` | HTTP callout `GET /probe` to the cluster, pauses; the answer's status and body go upstream and back as `x-probe-call-status` / `x-probe-call-body`; a failed callout is a local 503 |
//! | `x-probe-grpc: <cluster>` | gRPC callout `probe.Probe/Check`, pauses; the reply message comes back as `x-probe-grpc`; a failure is a local 503 |
//! | `x-probe-enqueue: <message>` | enqueues to the shared queue; the root appends received messages to shared key `switchyard.probe.queue` |
//! | `x-probe-pause: 1` | pauses the request; the next tick resumes it (through `set_effective_context`) |
//! | `x-probe-body: echo` / `upper` | at the end of the request body: local 200 echoing it / uppercase it before it goes upstream |
//! | `x-probe-trap: 1` | panics in the request-header callback, which aborts the VM: a fixture for VM failure recovery (`failure_policy`) tests |
//!
//! `{"mode":"cost", "op": "<op>", "repeat": N, "value_bytes": B}` makes one host call `N` times
//! in each request's header callback and nothing else, so a benchmark can price single host
//! calls in a real Envoy against `noop`: `shared_get` (a `B`-byte shared value), `shared_cas`
//! (get + CAS set of it), `property` (`source.address`), `headers` (all request headers),
//! `header` (`:path`), `time`, `metric` (counter increment), `log_debug` (a debug line Envoy
//! filters out at its default level), `none` (only the callback).
//!
//! Every response gets `x-probe-response: 1` and `x-probe-response-code` (the `response.code`
//! property). Metrics: `switchyard.probe.requests`, `.logged`, `.ticks`, `.queue_received`
//! (counters), `.paused` (gauge), `.body_bytes` (histogram).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use serde::Deserialize;
use switchyard_core::{parse_config, ConfigError};

#[cfg(target_arch = "wasm32")]
mod filter;

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    pub mode: String,
    #[serde(default)]
    pub tick_ms: u64,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// `cost` mode: the host call made `repeat` times in every request's header callback.
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default = "default_repeat")]
    pub repeat: u32,
    /// `cost` mode, `shared_get` / `shared_cas`: size of the shared value.
    #[serde(default)]
    pub value_bytes: usize,
}

/// What `cost` mode can repeat per request (see the crate docs).
pub const COST_OPS: [&str; 9] = [
    "none",
    "shared_get",
    "shared_cas",
    "property",
    "headers",
    "header",
    "time",
    "metric",
    "log_debug",
];

fn default_repeat() -> u32 {
    1
}

fn default_call_timeout_ms() -> u64 {
    1000
}

/// Parses and validates the probe configuration.
pub fn parse(bytes: &[u8]) -> Result<ProbeConfig, ConfigError> {
    let config: ProbeConfig = parse_config(bytes)?;
    if !["noop", "probe", "cost"].contains(&config.mode.as_str()) {
        return Err(ConfigError::new(
            "mode",
            format!(
                "unknown mode {:?}: expected \"noop\", \"probe\" or \"cost\"",
                config.mode
            ),
        ));
    }
    if config.mode == "cost" {
        let op = config.op.as_deref().unwrap_or("");
        if !COST_OPS.contains(&op) {
            return Err(ConfigError::new(
                "op",
                format!("unknown cost op {op:?}: expected one of {COST_OPS:?}"),
            ));
        }
    }
    Ok(config)
}

/// Parses `x-probe-add`'s `name=value`.
pub fn split_assignment(s: &str) -> Option<(&str, &str)> {
    let (name, value) = s.split_once('=')?;
    let name = name.trim();
    (!name.is_empty()).then_some((name, value.trim()))
}

/// Little-endian u64 counter value as stored in shared data (missing or malformed is 0).
pub fn decode_counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Renders a property value: UTF-8 text as is, an 8-byte value as Envoy's little-endian integer.
pub fn render_property(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_string(),
        _ => match <[u8; 8]>::try_from(bytes) {
            Ok(b) => i64::from_le_bytes(b).to_string(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_rejects_unknown() {
        assert_eq!(parse(br#"{"mode":"noop"}"#).unwrap().mode, "noop");
        let c = parse(br#"{"mode":"probe","tick_ms":5,"queue":"q"}"#).unwrap();
        assert_eq!(
            (c.tick_ms, c.queue.as_deref(), c.call_timeout_ms),
            (5, Some("q"), 1000)
        );
        let e = parse(br#"{"mode":"loud"}"#).unwrap_err();
        assert_eq!(e.path, "mode");
        assert!(parse(br#"{"mode":"noop","extra":1}"#).is_err());
        let c =
            parse(br#"{"mode":"cost","op":"shared_get","repeat":10,"value_bytes":64}"#).unwrap();
        assert_eq!(
            (c.op.as_deref(), c.repeat, c.value_bytes),
            (Some("shared_get"), 10, 64)
        );
        assert_eq!(
            parse(br#"{"mode":"cost","op":"nap"}"#).unwrap_err().path,
            "op"
        );
        assert_eq!(parse(br#"{"mode":"cost"}"#).unwrap_err().path, "op");
        assert!(parse(b"").is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(split_assignment("a = b"), Some(("a", "b")));
        assert_eq!(split_assignment("=b"), None);
        assert_eq!(split_assignment("ab"), None);
        assert_eq!(decode_counter(Some(&7u64.to_le_bytes())), 7);
        assert_eq!(decode_counter(Some(b"x")), 0);
        assert_eq!(decode_counter(None), 0);
        assert_eq!(render_property(b"/a"), "/a");
        assert_eq!(render_property(&200i64.to_le_bytes()), "200");
    }
}
