//! Envoy YAML pieces that several integration test files use, in the shape the shipped
//! configurations use them.

/// A route that forwards by the router filter's routing record (`cluster_header`).
pub const ROUTE_BY_CLUSTER_HEADER: &str = r#"
match:
  prefix: "/"
  headers:
  - name: x-switchyard-cluster
    present_match: true
route:
  cluster_header: x-switchyard-cluster
"#;

/// The cluster half of the override-host setup (as `envoy/hashring.yaml`): Envoy's
/// `override_host` policy reads `x-upstream-host`, and an upstream filter strips it.
pub const OVERRIDE_HOST_CLUSTER: &str = r#"
load_balancing_policy:
  policies:
  - typed_extension_config:
      name: envoy.load_balancing_policies.override_host
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost
        override_host_sources:
        - header: x-upstream-host
        fallback_policy:
          policies:
          - typed_extension_config:
              name: envoy.load_balancing_policies.round_robin
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config: { http_protocol_options: {} }
    http_filters:
    - name: envoy.filters.http.header_mutation
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
        mutations:
          request_mutations:
          - remove: x-upstream-host
    - name: envoy.filters.http.upstream_codec
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
"#;

/// A route retry policy: connection failures, resets and 5xx, two retries.
pub const RETRIES: &str = r#"
retry_policy:
  retry_on: connect-failure,reset,5xx
  num_retries: 2
"#;
