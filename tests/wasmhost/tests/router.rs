//! Router module tests Envoy cannot do deterministically: route-table reloads driven by the
//! virtual clock, with the config endpoint answering a bad table, a failure, a good table and a
//! 304, while requests on both workers keep being routed by the table in force.

use serde_json::json;
use std::time::Duration;
use switchyard_wasmhost::{Callout, CalloutReply, Host, LogLevel};

fn router() -> Host {
    let config = json!({
        "routes": [{"name": "a", "match": {"path": {"prefix": "/a"}}, "action": {"cluster": "svc-a"}}],
        "default": {"cluster": "svc-default"},
        "reload": {"cluster": "config", "path": "/routes.json", "interval": "1s", "timeout": "500ms"},
        "known_clusters": ["svc-a", "svc-b", "svc-default"],
        "version_header": true
    });
    Host::load("dist/router.wasm")
        .unwrap()
        .workers(2)
        .configure(config.to_string())
        .unwrap()
}

fn cluster_for(host: &mut Host, worker: usize, path: &str) -> String {
    let out = host.worker(worker).request().path(path).send().unwrap();
    let upstream = out
        .upstream
        .as_ref()
        .unwrap_or_else(|| panic!("{path} not routed: {out:?}"));
    upstream
        .header("x-switchyard-cluster")
        .unwrap_or("<none>")
        .to_string()
}

/// Advances virtual time in 100ms steps until a fetch is pending (at most `limit`); returns the
/// time that passed.
fn wait_for_fetch(host: &mut Host, limit: Duration) -> Duration {
    let mut waited = Duration::ZERO;
    while host.callouts().is_empty() && waited < limit {
        host.advance(Duration::from_millis(100)).unwrap();
        waited += Duration::from_millis(100);
    }
    waited
}

/// The single pending table fetch (one worker wins the lease per interval).
fn fetch(host: &Host) -> Callout {
    let calls = host.callouts();
    assert_eq!(
        calls.len(),
        1,
        "one fetch per interval across workers: {calls:?}"
    );
    let call = calls[0].clone();
    assert_eq!(call.cluster, "config");
    assert_eq!(call.header(":path"), Some("/routes.json"));
    call
}

#[test]
fn reloads_reject_bad_tables_and_switch_every_worker_to_good_ones() {
    let mut host = router();
    assert_eq!(cluster_for(&mut host, 0, "/a/1"), "svc-a");
    assert_eq!(cluster_for(&mut host, 1, "/b"), "svc-default");
    // The first fetch goes out on the first tick (one interval after configuration).
    assert!(host.callouts().is_empty());
    assert_eq!(
        wait_for_fetch(&mut host, Duration::from_secs(2)),
        Duration::from_secs(1)
    );

    // The endpoint answers a table that does not validate: kept out, loudly.
    let call = fetch(&host);
    host.answer(
        call.id,
        CalloutReply::http(200)
            .header("etag", "\"bad\"")
            .body(r#"{"routes": [{"name": "broken"}]}"#),
    )
    .unwrap();
    assert_eq!(host.metric("switchyard.router.reloads_rejected"), Some(1));
    assert!(host
        .log_messages(LogLevel::Error)
        .iter()
        .any(|m| m.contains("rejected reloaded route table")));
    assert_eq!(cluster_for(&mut host, 1, "/a/1"), "svc-a");

    // Nothing is fetched before the interval has passed.
    host.advance(Duration::from_millis(500)).unwrap();
    assert!(host.callouts().is_empty());
    host.advance(Duration::from_millis(500)).unwrap();
    let call = fetch(&host);
    assert_eq!(call.header("if-none-match"), Some("\"bad\""));
    // A failed fetch keeps the table in force.
    host.fail_callout(call.id).unwrap();
    assert_eq!(host.metric("switchyard.router.reloads_failed"), Some(1));

    host.advance(Duration::from_secs(1)).unwrap();
    let call = fetch(&host);
    let table = json!({
        "routes": [{"name": "a", "match": {"path": {"prefix": "/a"}}, "action": {"cluster": "svc-b"}}],
        "default": {"cluster": "svc-default"}
    });
    host.answer(
        call.id,
        CalloutReply::http(200)
            .header("etag", "\"v2\"")
            .body(table.to_string()),
    )
    .unwrap();
    assert_eq!(host.metric("switchyard.router.reloads_ok"), Some(1));
    // Both workers route by the new table: the other worker picks it up from shared data.
    assert_eq!(cluster_for(&mut host, 0, "/a/1"), "svc-b");
    assert_eq!(cluster_for(&mut host, 1, "/a/1"), "svc-b");
    let out = host.worker(1).request().path("/a").send().unwrap();
    assert_eq!(out.response_header("x-switchyard-table-version"), Some("1"));

    // Unchanged on the endpoint: a 304 changes nothing.
    host.advance(Duration::from_secs(1)).unwrap();
    let call = fetch(&host);
    assert_eq!(call.header("if-none-match"), Some("\"v2\""));
    host.answer(call.id, CalloutReply::http(304)).unwrap();
    assert_eq!(
        host.metric("switchyard.router.reloads_not_modified"),
        Some(1)
    );
    assert_eq!(cluster_for(&mut host, 0, "/a/9"), "svc-b");
}

#[test]
fn a_fetch_that_never_answers_times_out_and_is_retried() {
    let mut host = router();
    wait_for_fetch(&mut host, Duration::from_secs(2));
    let first = fetch(&host);
    assert_eq!(first.timeout, Some(Duration::from_millis(500)));
    host.advance(Duration::from_millis(500)).unwrap();
    assert!(host.callouts().is_empty(), "the fetch timed out");
    assert_eq!(host.metric("switchyard.router.reloads_failed"), Some(1));
    // The next fetch is due an interval after the failure; ticks come every second.
    let waited = wait_for_fetch(&mut host, Duration::from_secs(3));
    assert!(
        waited >= Duration::from_millis(1000),
        "retried after {waited:?}, before the interval"
    );
    assert!(
        waited <= Duration::from_millis(2000),
        "not retried within interval + tick"
    );
    let second = fetch(&host);
    assert_ne!(second.id, first.id);
    assert_eq!(cluster_for(&mut host, 0, "/a"), "svc-a");
}
