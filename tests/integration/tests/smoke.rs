//! The harness end to end: a real Envoy proxying to the test upstream, and a (tiny,
//! hand-written) proxy-wasm module loaded through the harness-generated configuration.

use std::time::Duration;
use switchyard_integration::*;

/// A minimal proxy-wasm (ABI 0.2.1) module: defines counter `smoke.responses` and, on every
/// response, adds `x-smoke-wasm: loaded` and increments the counter. Enough for Envoy's V8 to
/// create real VMs (unlike an empty module, which Envoy refuses to load).
const PROBE_WAT: &str = r#"
(module
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $counter (mut i32) (i32.const 0))
  (data (i32.const 16) "x-smoke-wasm")
  (data (i32.const 32) "loaded")
  (data (i32.const 48) "smoke.responses")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    ;; metric type 0 = counter; the id is written at address 64
    (drop (call $define_metric (i32.const 0) (i32.const 48) (i32.const 15) (i32.const 64)))
    (global.set $counter (i32.load (i32.const 64)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; map type 2 = response headers
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 12) (i32.const 32) (i32.const 6)))
    (drop (call $increment_metric (global.get $counter) (i64.const 1)))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
)
"#;

/// Envoy with the probe module in front of `up`. The module is written into Envoy's own
/// scratch directory (`{{DIR}}`), so nothing is left behind.
fn with_module(wat_text: &str, up_addr: std::net::SocketAddr) -> EnvoyBuilder {
    let bytes = wat::parse_str(wat_text).expect("module must assemble");
    Envoy::builder()
        .file("probe.wasm", bytes)
        .wasm(
            WasmFilter::new("probe")
                .path("{{DIR}}/probe.wasm")
                .config(&json!({"k": "v"})),
        )
        .cluster("backend", [up_addr])
}

#[test]
fn envoy_proxies_to_the_upstream_and_echoes_the_request() {
    let up = upstream("u1");
    let envoy = plain_proxy(&up);
    let resp = envoy
        .get("/hello?status=201")
        .header("x-user", "alice")
        .send();
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.header("x-upstream-id"), Some("u1"));
    let echo = resp.json();
    assert_eq!(echo["upstream"], "u1");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "status=201");
    assert_eq!(echo["headers"]["x-user"], "alice");
    assert_eq!(up.count_path("/hello"), 1);
    assert_eq!(up.requests()[0].header("x-user"), Some("alice"));
    assert!(eventually(Duration::from_secs(5), || envoy
        .stat_value("cluster.backend.upstream_rq_201")
        == 1));
}

#[test]
fn generated_wasm_filter_config_passes_envoy_validation() {
    let up = upstream("u1");
    let builder = with_module(PROBE_WAT, up.addr());
    let yaml = builder.render().expect("render");
    assert!(
        yaml.contains("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"),
        "{yaml}"
    );
    assert!(yaml.contains("/probe.wasm"), "{yaml}");
    assert!(yaml.contains(r#"value: "{\"k\":\"v\"}""#), "{yaml}");
    if let Err(out) = builder.validate() {
        panic!("Envoy rejected the generated config:\n{out}\n--- config ---\n{yaml}");
    }
}

#[test]
fn validation_rejects_a_module_that_is_not_proxy_wasm() {
    // A valid but empty wasm module: Envoy cannot create a proxy-wasm VM from it.
    let result = with_module("(module)", "127.0.0.1:9".parse().unwrap()).validate();
    let out = result.expect_err("Envoy must refuse a module without the proxy-wasm ABI");
    assert!(out.contains("Wasm"), "{out}");
}

#[test]
fn wasm_module_runs_in_envoy_and_its_metric_is_visible() {
    let up = upstream("u1");
    let envoy = with_module(PROBE_WAT, up.addr()).start();
    for _ in 0..3 {
        let resp = envoy.get("/x").send();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-smoke-wasm"), Some("loaded"));
        assert_eq!(resp.upstream(), Some("u1"));
    }
    // Envoy 1.40 names proxy-wasm metrics `wasmcustom.<name>`; stat() accepts both spellings.
    assert!(
        eventually(Duration::from_secs(5), || envoy.stat("smoke.responses")
            == Some(3)),
        "stats: {:?}",
        envoy
            .stats()
            .into_iter()
            .filter(|(k, _)| k.contains("smoke"))
            .collect::<Vec<_>>()
    );
    assert_eq!(envoy.stat("wasmcustom.smoke.responses"), Some(3));
    assert!(envoy.stats().contains_key("wasmcustom.smoke.responses"));
}

#[test]
fn upstream_failures_reach_the_client_as_envoy_errors() {
    let up = upstream("u1");
    let envoy = plain_proxy(&up);
    assert_eq!(envoy.get("/ok").send().status, 200);
    // reset=1 drops the upstream connection without an answer.
    assert_eq!(envoy.get("/r?reset=1").send().status, 503);
    up.stop();
    let resp = envoy.get("/down").send();
    assert_eq!(resp.status, 503, "{}", resp.text());
    up.restart().unwrap();
    assert_eq!(envoy.get("/up-again").send().status, 200);
}

#[test]
fn envoy_restart_keeps_config_and_ports() {
    let up = upstream("u1");
    let mut envoy = plain_proxy(&up);
    let (listen, admin, pid) = (envoy.listen_addr(), envoy.admin_addr(), envoy.pid());
    assert_eq!(envoy.get("/a").send().status, 200);
    envoy.stop();
    assert!(!envoy.is_running());
    assert!(envoy.get("/a").try_send().is_err());
    envoy.restart();
    assert_ne!(envoy.pid(), pid);
    assert_eq!((envoy.listen_addr(), envoy.admin_addr()), (listen, admin));
    assert_eq!(envoy.get("/b").send().upstream(), Some("u1"));
    // Stats start over in the new process.
    assert_eq!(envoy.stat("cluster.backend.upstream_rq_total"), Some(1));
}

#[test]
fn dropping_envoy_kills_the_process() {
    let up = upstream("u1");
    let envoy = plain_proxy(&up);
    let pid = envoy.pid().unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    let dir = envoy.dir().to_path_buf();
    drop(envoy);
    assert!(!proc_dir.exists(), "envoy {pid} still running after drop");
    assert!(!dir.exists(), "scratch dir {} left behind", dir.display());
}

#[test]
fn routes_choose_clusters_and_parallel_requests_all_arrive() {
    let a = upstream("a");
    let b = upstream("b");
    let envoy = Envoy::builder()
        .cluster("a", [a.addr()])
        .cluster("b", [b.addr()])
        .route(
            r#"match: { prefix: "/", headers: [ { name: x-cluster, present_match: true } ] }
                  route: { cluster_header: x-cluster }"#,
        )
        .route(
            r#"
            match: { prefix: "/b/" }
            route: { cluster: b }
            "#,
        )
        .start();
    assert_eq!(envoy.get("/x").send().upstream(), Some("a"));
    assert_eq!(envoy.get("/b/x").send().upstream(), Some("b"));
    assert_eq!(
        envoy.get("/x").header("x-cluster", "b").send().upstream(),
        Some("b")
    );

    let results = parallel(60, 6, |i| {
        envoy.get(&format!("/{}/p{i}", if i % 2 == 0 { "a" } else { "b" }))
    });
    assert_eq!(results.len(), 60);
    for (i, r) in results.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), Some(if i % 2 == 0 { "a" } else { "b" }));
    }
    assert_eq!(a.count(), 1 + 30);
    assert_eq!(b.count(), 2 + 30);
}

#[test]
fn template_with_placeholders_and_extra_ports() {
    let up = upstream("t1");
    let template = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {{ADMIN_PORT}} } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: {{LISTENER_PORT}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config: { virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, route: { cluster: up } } ] } ] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  - name: second
    address: { socket_address: { address: 127.0.0.1, port_value: {{PORT:second}} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: second
          route_config: { virtual_hosts: [ { name: all, domains: ["*"], routes: [ { match: { prefix: "/" }, direct_response: { status: 299, body: { filename: "{{DIR}}/body.txt" } } } ] } ] }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: up
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {{UP_PORT}} } } } } ] } ]
"#;
    let envoy = Envoy::from_yaml(template)
        .var("UP_PORT", up.port())
        .port("second")
        .file("body.txt", "from a file")
        .concurrency(1)
        .start();
    assert_eq!(envoy.get("/t").send().upstream(), Some("t1"));
    let second = envoy.port("second").unwrap();
    let resp = Request::new(([127, 0, 0, 1], second).into(), "GET", "/").send();
    assert_eq!(resp.status, 299);
    assert_eq!(resp.text(), "from a file");

    let typo = Envoy::from_yaml(&template.replace("{{UP_PORT}}", "{{UPPORT}}"))
        .var("UP_PORT", 1)
        .port("second");
    let err = typo.render().unwrap_err();
    assert!(err.contains("UPPORT"), "{err}");
}

#[test]
fn rejected_config_reports_envoy_log() {
    let err = Envoy::builder()
        .cluster_with(Cluster::new("backend", ["127.0.0.1:9"]).extra("lb_policy: NOT_A_POLICY"))
        .try_start()
        .expect_err("Envoy must reject an unknown lb_policy");
    assert!(err.message.contains("exited"), "{}", err.message);
    assert!(err.log.contains("NOT_A_POLICY"), "{}", err.log);
    assert!(err.config.contains("lb_policy: NOT_A_POLICY"));
}

#[test]
fn native_filters_and_hcm_extras_are_placed_in_the_chain() {
    let up = upstream("u1");
    let envoy = Envoy::builder()
        .native_filter(
            r#"
            name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - append: { header: { key: x-added, value: native }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            "#,
        )
        .hcm_extra("server_name: switchyard-test")
        .cluster("backend", [up.addr()])
        .start();
    let resp = envoy.get("/n").send();
    assert_eq!(resp.json()["headers"]["x-added"], "native");
    assert_eq!(resp.header("server"), Some("switchyard-test"));
    assert_eq!(up.requests()[0].header("x-added"), Some("native"));
}

#[test]
fn kept_alive_connection_carries_several_requests() {
    let up = upstream("u1");
    let envoy = plain_proxy(&up);
    let mut conn = Connection::open(envoy.listen_addr()).unwrap();
    for i in 0..3 {
        let resp = conn.send(&envoy.get(&format!("/k{i}"))).unwrap();
        assert_eq!(resp.status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || envoy
        .stat_value("http.ingress.downstream_cx_total")
        == 1));
    assert_eq!(up.count(), 3);
}

#[test]
fn upstream_speaks_h2c_to_envoy() {
    let up = upstream("h2");
    let envoy = Envoy::builder()
        .cluster_with(Cluster::new("backend", [up.addr()]).extra(
            r#"
            typed_extension_protocol_options:
              envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
                "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
                explicit_http_config:
                  http2_protocol_options: {}
            "#,
        ))
        .start();
    let resp = envoy.get("/two?size=5000&chunked=1").send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 5000);
    assert_eq!(envoy.get("/two").send().json()["version"], "HTTP/2.0");
    assert_eq!(up.requests()[0].version, "HTTP/2.0");
}

/// A file-based CDS resource pointing the `backend` cluster at `up`.
fn cds_file(version: u32, up: &Upstream) -> String {
    format!(
        r#"version_info: "{version}"
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: backend
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: backend
    endpoints: [ {{ lb_endpoints: [ {{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }} ] }} ]
"#,
        port = up.port()
    )
}

#[test]
fn file_based_dynamic_resources_follow_write_file() {
    let a = upstream("a");
    let b = upstream("b");
    let envoy = Envoy::builder()
        .bootstrap_extra(
            r#"
            dynamic_resources:
              cds_config:
                resource_api_version: V3
                path_config_source: { path: "{{DIR}}/cds.yaml" }
            "#,
        )
        .file("cds.yaml", cds_file(1, &a))
        .route_to("backend")
        .start();
    assert_eq!(envoy.get("/f").send().upstream(), Some("a"));
    envoy.write_file("cds.yaml", cds_file(2, &b)).unwrap();
    wait_until(
        "the new cluster version is used",
        Duration::from_secs(10),
        || envoy.get("/f").send().upstream() == Some("b"),
    );
    assert!(envoy.stat_value("cluster_manager.cds.update_success") >= 2);
}
