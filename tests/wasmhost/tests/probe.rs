//! The host proven on the probe filter: every facility the Switchyard filters use.

use std::time::Duration;
use switchyard_wasmhost::{Action, CalloutKind, CalloutReply, Host, HostError, LogLevel, Phase};

fn probe(workers: usize, config: &str) -> Host {
    Host::load("dist/probe.wasm")
        .unwrap()
        .workers(workers)
        .configure(config)
        .unwrap()
}

fn counter(host: &Host, key: &str) -> u64 {
    host.shared_data(key)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

const PROBE: &str = r#"{"mode":"probe","call_timeout_ms":500}"#;

#[test]
fn noop_mode_passes_everything_through() {
    let mut host = probe(1, r#"{"mode":"noop"}"#);
    let out = host
        .request()
        .path("/a")
        .header("x-probe-reply", "500")
        .upstream_status(201)
        .upstream_body("hi")
        .send()
        .unwrap();
    assert_eq!(out.action, Action::Continue);
    assert!(out.upstream_reached());
    assert_eq!(out.status(), Some(201));
    assert_eq!(out.response_body(), "hi");
    assert_eq!(out.response_header("x-probe-response"), None);
    assert_eq!(out.request_header(":path"), Some("/a"));
}

#[test]
fn rejected_configuration_reports_the_filter_error() {
    let err = Host::load("dist/probe.wasm")
        .unwrap()
        .configure(r#"{"mode":"loud"}"#)
        .err()
        .unwrap();
    match &err {
        HostError::ConfigRejected { worker: 0, logs } => {
            assert!(
                logs.iter()
                    .any(|l| l.contains("invalid configuration: mode: unknown mode")),
                "{logs:?}"
            )
        }
        other => panic!("expected a rejected configuration, got {other}"),
    }
}

#[test]
fn unknown_imports_are_named_at_load() {
    // A module importing env.proxy_frobnicate: () -> ().
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    wasm.extend_from_slice(&[1, 4, 1, 0x60, 0, 0]);
    let mut import = vec![1, 3];
    import.extend_from_slice(b"env");
    import.push(16);
    import.extend_from_slice(b"proxy_frobnicate");
    import.extend_from_slice(&[0, 0]);
    wasm.push(2);
    wasm.push(import.len() as u8);
    wasm.extend_from_slice(&import);
    let path = std::env::temp_dir().join(format!("wasmhost-unknown-{}.wasm", std::process::id()));
    std::fs::write(&path, wasm).unwrap();
    let err = Host::load(&path).unwrap().configure("{}").err().unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        err,
        HostError::UnknownImports(vec!["env::proxy_frobnicate".into()])
    );
    assert!(err.to_string().contains("env::proxy_frobnicate"));
}

/// Appends a wasm section (all test sections are shorter than 128 bytes).
fn section(wasm: &mut Vec<u8>, id: u8, body: &[u8]) {
    wasm.push(id);
    wasm.push(body.len() as u8);
    wasm.extend_from_slice(body);
}

fn export(out: &mut Vec<u8>, name: &str, kind: u8, index: u8) {
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&[kind, index]);
}

#[test]
fn a_trap_is_reported_with_the_callback_and_poisons_the_worker() {
    // A proxy-wasm module whose proxy_on_context_create executes `unreachable`.
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    section(&mut wasm, 1, &[2, 0x60, 0, 0, 0x60, 2, 0x7f, 0x7f, 0]);
    section(&mut wasm, 3, &[3, 0, 0, 1]);
    section(&mut wasm, 5, &[1, 0, 1]);
    let mut exports = vec![4];
    export(&mut exports, "memory", 2, 0);
    export(&mut exports, "proxy_abi_version_0_2_1", 0, 0);
    export(&mut exports, "_initialize", 0, 1);
    export(&mut exports, "proxy_on_context_create", 0, 2);
    section(&mut wasm, 7, &exports);
    section(
        &mut wasm,
        10,
        &[3, 2, 0, 0x0b, 2, 0, 0x0b, 3, 0, 0x00, 0x0b],
    );
    let path = std::env::temp_dir().join(format!("wasmhost-trap-{}.wasm", std::process::id()));
    std::fs::write(&path, wasm).unwrap();
    let err = Host::load(&path).unwrap().configure("{}").err().unwrap();
    std::fs::remove_file(&path).ok();
    match &err {
        HostError::Trap {
            worker: 0,
            callback,
            message,
            ..
        } => {
            assert_eq!(callback, "proxy_on_context_create");
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected a trap, got {other}"),
    }
}

#[test]
fn missing_module_says_how_to_build_it() {
    let err = Host::load("dist/does-not-exist.wasm").err().unwrap();
    assert!(err.to_string().contains("cargo xtask build"), "{err}");
}

#[test]
fn local_reply_skips_upstream_and_runs_response_callbacks() {
    let mut host = probe(1, PROBE);
    let out = host
        .request()
        .header("x-probe-reply", "429")
        .send()
        .unwrap();
    assert_eq!(out.action, Action::Continue);
    assert!(!out.upstream_reached());
    assert_eq!(out.status(), Some(429));
    let reply = out.local_reply.as_ref().unwrap();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("x-probe-reply"), Some("1"));
    assert_eq!(out.response_body(), "probe local reply\n");
    // Envoy runs the filter's encoder callbacks on its own local reply.
    assert_eq!(out.response_header("x-probe-response"), Some("1"));
    assert_eq!(out.response_header("x-probe-response-code"), Some("429"));
    assert_eq!(host.metric("switchyard.probe.logged"), Some(1));
}

#[test]
fn request_headers_are_mutated_before_the_upstream() {
    let mut host = probe(1, PROBE);
    let out = host
        .request()
        .header("x-probe-add", "x-added=yes")
        .header("x-probe-remove", "x-gone")
        .header("x-gone", "1")
        .header("x-gone", "2")
        .send()
        .unwrap();
    let upstream = out.upstream.as_ref().unwrap();
    assert_eq!(upstream.header("x-added"), Some("yes"));
    assert_eq!(upstream.header("x-gone"), None);
    assert_eq!(out.status(), Some(200));
    assert_eq!(out.response_header("x-probe-response"), Some("1"));
}

#[test]
fn shared_counter_is_exact_across_interleaved_workers() {
    let mut host = probe(3, PROBE);
    let mut seen = Vec::new();
    for i in 0..9 {
        let out = host
            .worker(i % 3)
            .request()
            .header("x-probe-count", "k")
            .send()
            .unwrap();
        seen.push(out.response_header("x-probe-counted").unwrap().to_string());
        assert_eq!(
            out.upstream.as_ref().unwrap().header("x-probe-counted"),
            Some(seen[i].as_str())
        );
    }
    assert_eq!(seen, (1..=9).map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(counter(&host, "switchyard.probe.count.k"), 9);
    assert_eq!(host.metric("switchyard.probe.requests"), Some(9));
}

#[test]
fn cas_mismatch_is_retried_and_exhaustion_is_visible() {
    let mut host = probe(2, PROBE);
    host.worker(0)
        .request()
        .header("x-probe-count", "c")
        .send()
        .unwrap();
    // Another worker wins the next three races; the filter's bounded retries absorb them.
    let mut losses = 3;
    host.interfere_shared(move |_| {
        losses -= 1;
        losses >= 0
    });
    let out = host
        .worker(1)
        .request()
        .header("x-probe-count", "c")
        .send()
        .unwrap();
    assert_eq!(out.response_header("x-probe-counted"), Some("2"));
    // Every race lost: retries run out and nothing is written.
    host.interfere_shared(|_| true);
    let out = host
        .worker(0)
        .request()
        .header("x-probe-count", "c")
        .send()
        .unwrap();
    assert_eq!(out.response_header("x-probe-counted"), Some("contended"));
    assert!(host
        .log_messages(LogLevel::Warn)
        .iter()
        .any(|m| m.contains("Exhausted { retries: 8 }")));
    host.stop_interfering();
    let (value, cas) = host
        .shared_data_with_cas("switchyard.probe.count.c")
        .unwrap();
    assert_eq!(u64::from_le_bytes(value.try_into().unwrap()), 2);
    // A write by "another worker" changes the token.
    host.set_shared_data("switchyard.probe.count.c", 40u64.to_le_bytes());
    assert_ne!(
        host.shared_data_with_cas("switchyard.probe.count.c")
            .unwrap()
            .1,
        cas
    );
    let out = host
        .worker(1)
        .request()
        .header("x-probe-count", "c")
        .send()
        .unwrap();
    assert_eq!(out.response_header("x-probe-counted"), Some("41"));
}

#[test]
fn properties_come_from_request_host_and_response() {
    let mut host = Host::load("dist/probe.wasm")
        .unwrap()
        .property("route_name", "r-main")
        .configure(PROBE)
        .unwrap();
    let cases = [
        ("source.address", "10.1.2.3:4444"),
        ("request.path", "/p?q=1"),
        ("request.method", "PUT"),
        ("route_name", "r-main"),
        ("plugin_name", "switchyard"),
        ("cluster_name", "upstream"),
        ("no.such", "<none>"),
    ];
    for (path, expected) in cases {
        let out = host
            .request()
            .method("PUT")
            .path("/p?q=1")
            .source("10.1.2.3:4444")
            .header("x-probe-property", path)
            .upstream_status(503)
            .send()
            .unwrap();
        assert_eq!(
            out.response_header("x-probe-property-value"),
            Some(expected),
            "{path}"
        );
        assert_eq!(out.response_header("x-probe-response-code"), Some("503"));
    }
    host.set_property("route_name", "r-other");
    let out = host
        .request()
        .header("x-probe-property", "route_name")
        .send()
        .unwrap();
    assert_eq!(
        out.response_header("x-probe-property-value"),
        Some("r-other")
    );
}

#[test]
fn http_callout_is_recorded_and_answered_when_the_test_chooses() {
    let mut host = probe(2, PROBE);
    let out = host
        .worker(1)
        .request()
        .header("x-probe-call", "authz")
        .send()
        .unwrap();
    assert_eq!(out.action, Action::Pause);
    assert_eq!(out.paused_at, Some(Phase::RequestHeaders));
    assert!(!out.upstream_reached());
    let calls = host.callouts();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!((call.worker, call.cluster.as_str()), (1, "authz"));
    assert_eq!(call.header(":path"), Some("/probe"));
    assert_eq!(call.header("x-probe-from"), Some("probe"));
    assert_eq!(call.timeout, Some(Duration::from_millis(500)));
    assert!(matches!(call.kind, CalloutKind::Http { .. }));
    // Still paused: nothing happens until the test answers.
    assert!(host.outcome(out.stream).unwrap().is_paused());
    host.answer(
        call.id,
        CalloutReply::http(202).header("x-a", "b").body("granted"),
    )
    .unwrap();
    let done = host.outcome(out.stream).unwrap();
    assert_eq!(done.action, Action::Continue);
    assert_eq!(done.status(), Some(200));
    let upstream = done.upstream.as_ref().unwrap();
    assert_eq!(upstream.header("x-probe-call-status"), Some("202"));
    assert_eq!(upstream.header("x-probe-call-body"), Some("granted"));
    assert_eq!(done.response_header("x-probe-call-body"), Some("granted"));
    assert!(host.callouts().is_empty());
    assert!(host.answer(call.id, CalloutReply::http(200)).is_err());
}

#[test]
fn failed_and_timed_out_callouts_reach_the_filter_like_envoy() {
    let mut host = probe(1, PROBE);
    let failed = host
        .request()
        .header("x-probe-call", "authz")
        .send()
        .unwrap();
    let id = host.callouts()[0].id;
    host.fail_callout(id).unwrap();
    let failed = host.outcome(failed.stream).unwrap();
    assert_eq!(failed.status(), Some(503));
    assert_eq!(failed.response_body(), "probe callout failed\n");

    let slow = host
        .request()
        .header("x-probe-call", "authz")
        .send()
        .unwrap();
    host.advance(Duration::from_millis(499)).unwrap();
    assert!(host.outcome(slow.stream).unwrap().is_paused());
    host.advance(Duration::from_millis(1)).unwrap();
    let slow = host.outcome(slow.stream).unwrap();
    assert_eq!(slow.status(), Some(503));
    assert!(host.callouts().is_empty());
}

#[test]
fn callouts_to_unknown_clusters_fail_at_dispatch() {
    let mut host = Host::load("dist/probe.wasm")
        .unwrap()
        .clusters(&["authz"])
        .configure(PROBE)
        .unwrap();
    let out = host
        .request()
        .header("x-probe-call", "nope")
        .send()
        .unwrap();
    assert_eq!(out.status(), Some(500));
    assert_eq!(out.response_body(), "probe callout not sent: BadArgument\n");
    assert!(host.callouts().is_empty());
}

#[test]
fn grpc_callouts_answer_and_fail() {
    let mut host = probe(1, PROBE);
    let ok = host
        .request()
        .header("x-probe-grpc", "grpc-backend")
        .send()
        .unwrap();
    let call = host.callouts().remove(0);
    match &call.kind {
        CalloutKind::Grpc {
            service,
            method,
            message,
            ..
        } => {
            assert_eq!(
                (service.as_str(), method.as_str()),
                ("probe.Probe", "Check")
            );
            assert_eq!(message, b"ping");
        }
        other => panic!("expected a gRPC callout, got {other:?}"),
    }
    host.answer(call.id, CalloutReply::grpc_ok("pong")).unwrap();
    assert_eq!(
        host.outcome(ok.stream)
            .unwrap()
            .response_header("x-probe-grpc"),
        Some("pong")
    );

    let bad = host
        .request()
        .header("x-probe-grpc", "grpc-backend")
        .send()
        .unwrap();
    let id = host.callouts()[0].id;
    host.answer(
        id,
        CalloutReply::GrpcFailure {
            status: 7,
            message: "denied".into(),
        },
    )
    .unwrap();
    let bad = host.outcome(bad.stream).unwrap();
    assert_eq!(bad.status(), Some(503));
    assert_eq!(bad.response_body(), "probe grpc failed: 7\n");
    // An HTTP answer to a gRPC callout is a test mistake.
    host.request().header("x-probe-grpc", "g").send().unwrap();
    let id = host.callouts()[0].id;
    assert!(matches!(
        host.answer(id, CalloutReply::http(200)),
        Err(HostError::Usage(_))
    ));
}

#[test]
fn ticks_fire_only_as_virtual_time_passes() {
    let mut host = probe(2, r#"{"mode":"probe","tick_ms":1000}"#);
    let start = host.now_nanos();
    assert_eq!(host.metric("switchyard.probe.ticks"), Some(0));
    host.advance(Duration::from_millis(999)).unwrap();
    assert_eq!(host.metric("switchyard.probe.ticks"), Some(0));
    host.advance(Duration::from_millis(2501)).unwrap();
    // 3 ticks on each of 2 workers, one shared stat and one shared counter.
    assert_eq!(host.metric("switchyard.probe.ticks"), Some(6));
    assert_eq!(counter(&host, "switchyard.probe.ticks"), 6);
    assert_eq!(host.now_nanos() - start, 3_500_000_000);
}

#[test]
fn paused_request_is_resumed_from_the_root_context() {
    let mut host = probe(1, r#"{"mode":"probe","tick_ms":100}"#);
    let out = host.request().header("x-probe-pause", "1").send().unwrap();
    assert!(out.is_paused());
    assert_eq!(host.metric("switchyard.probe.paused"), Some(1));
    assert_eq!(host.in_flight(), vec![out.stream]);
    host.advance(Duration::from_millis(100)).unwrap();
    let done = host.outcome(out.stream).unwrap();
    assert_eq!(done.action, Action::Continue);
    assert!(done.upstream_reached());
    assert_eq!(done.status(), Some(200));
    assert!(host.in_flight().is_empty());
    assert_eq!(host.metric("switchyard.probe.paused"), Some(0));
}

#[test]
fn shared_queue_delivers_to_the_last_registered_worker() {
    let mut host = probe(2, r#"{"mode":"probe","queue":"events"}"#);
    host.worker(0)
        .request()
        .header("x-probe-enqueue", "a")
        .send()
        .unwrap();
    host.worker(1)
        .request()
        .header("x-probe-enqueue", "b")
        .send()
        .unwrap();
    assert_eq!(host.shared_data("switchyard.probe.queue").unwrap(), b"a,b");
    assert_eq!(host.metric("switchyard.probe.queue_received"), Some(2));
}

#[test]
fn request_bodies_are_echoed_or_rewritten() {
    let mut host = probe(1, PROBE);
    let echo = host
        .request()
        .method("POST")
        .header("x-probe-body", "echo")
        .body("hello body")
        .send()
        .unwrap();
    assert_eq!(echo.status(), Some(200));
    assert_eq!(echo.response_body(), "hello body");
    assert!(!echo.upstream_reached());
    let upper = host
        .request()
        .method("POST")
        .header("x-probe-body", "upper")
        .body("shout")
        .send()
        .unwrap();
    assert_eq!(upper.upstream.as_ref().unwrap().body_text(), "SHOUT");
    assert_eq!(
        host.histogram("switchyard.probe.body_bytes"),
        Some(vec![10, 5])
    );
    // With trailers the body callback never sees the end of stream: its Pause only buffers
    // (Envoy's StopIterationAndBuffer) and the trailers still arrive.
    let buffered = host
        .request()
        .method("POST")
        .header("x-probe-body", "upper")
        .body("quiet")
        .trailer("x-t", "1")
        .send()
        .unwrap();
    let upstream = buffered.upstream.as_ref().unwrap();
    assert_eq!(upstream.body_text(), "quiet");
    assert_eq!(upstream.trailers, vec![("x-t".to_string(), b"1".to_vec())]);
    assert_eq!(buffered.status(), Some(200));
}

#[test]
fn logs_are_captured_per_level_and_worker() {
    let mut host = probe(2, PROBE);
    host.worker(1)
        .request()
        .method("DELETE")
        .path("/x")
        .send()
        .unwrap();
    let logs = host.logs();
    assert!(logs.iter().any(|l| l.worker == 1
        && l.level == LogLevel::Info
        && l.message == "switchyard probe: request DELETE /x"));
    assert!(logs
        .iter()
        .any(|l| l.worker == 0 && l.message.starts_with("switchyard probe 0.1.0 loaded")));
    host.clear_logs();
    assert!(host.logs().is_empty());
}

#[test]
fn reconfigure_keeps_the_old_configuration_when_rejected() {
    let mut host = probe(2, PROBE);
    let err = host
        .reconfigure(r#"{"mode":"probe","nope":1}"#)
        .err()
        .unwrap();
    assert!(matches!(err, HostError::ConfigRejected { .. }), "{err}");
    let out = host
        .worker(1)
        .request()
        .header("x-probe-reply", "418")
        .send()
        .unwrap();
    assert_eq!(out.status(), Some(418));
    host.reconfigure(r#"{"mode":"noop"}"#).unwrap();
    let out = host
        .worker(1)
        .request()
        .header("x-probe-reply", "418")
        .send()
        .unwrap();
    assert_eq!(out.status(), Some(200));
}

#[test]
fn same_inputs_replay_identically() {
    let run = || {
        let mut host = probe(2, r#"{"mode":"probe","tick_ms":250}"#);
        let mut trace = Vec::new();
        for i in 0..6 {
            let out = host
                .worker(i % 2)
                .request()
                .header("x-probe-count", "r")
                .send()
                .unwrap();
            trace.push(out.response_header("x-probe-counted").unwrap().to_string());
            host.advance(Duration::from_millis(300)).unwrap();
        }
        (trace, host.metrics(), host.shared_keys(), host.now_nanos())
    };
    assert_eq!(run(), run());
}
