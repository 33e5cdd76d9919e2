//! Envoy YAML pieces that several integration test files use, in the shape the shipped
//! configurations use them.

/// A route that forwards by the router filter's routing record (`cluster_header`), and the
/// cluster half of the override-host setup (as `envoy/hashring.yaml`): Envoy's `override_host`
/// policy reads `x-upstream-host`, and an upstream filter strips it. Shared with `cargo xtask`'s
/// demo.
pub use switchyard_bootstrap::{OVERRIDE_HOST_CLUSTER, ROUTE_BY_CLUSTER_HEADER};

/// A route retry policy: connection failures, resets and 5xx, two retries.
pub const RETRIES: &str = r#"
retry_policy:
  retry_on: connect-failure,reset,5xx
  num_retries: 2
"#;
