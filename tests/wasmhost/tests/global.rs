//! Global limits (`scope: global`) of the rate limit module against a scripted rate limit
//! service: the test answers each `ShouldRateLimit` call with the bytes a service would send
//! (or a gRPC status, or a timeout by advancing the virtual clock).

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use switchyard_wasmhost::{Callout, CalloutKind, CalloutReply, Host, Outcome};

const S: u64 = 1_000_000_000;

fn ratelimit(workers: usize, config: Value) -> Host {
    Host::load("dist/ratelimit.wasm")
        .unwrap()
        .workers(workers)
        .configure(config.to_string())
        .unwrap()
}

fn global_rule(extra: Value) -> Value {
    let mut rule = json!({
        "name": "g",
        "scope": "global",
        "key": [{"header": "x-user-id"}],
        "service": {"cluster": "rls", "domain": "edge"}
    });
    if let (Some(r), Some(e)) = (rule.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if k == "service" {
                for (sk, sv) in v.as_object().unwrap() {
                    r["service"][sk] = sv.clone();
                }
            } else {
                r.insert(k.clone(), v.clone());
            }
        }
    }
    json!({ "rules": [rule] })
}

fn hit(host: &mut Host, worker: usize, user: &str) -> Outcome {
    host.worker(worker)
        .request()
        .path("/api")
        .header("x-user-id", user)
        .send()
        .unwrap()
}

// ---- a minimal protobuf codec for the test's side of the protocol ----------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// A `RateLimitResponse`: overall code (1 OK, 2 OVER_LIMIT), one status with limit
/// `requests` per `unit` (1 second, 2 minute), `remaining`, optional reset, headers to add.
fn answer(
    code: u64,
    requests: u64,
    unit: u64,
    remaining: u64,
    reset_ns: Option<u64>,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut out = Vec::new();
    field_varint(&mut out, 1, code);
    let mut status = Vec::new();
    field_varint(&mut status, 1, code);
    let mut limit = Vec::new();
    field_varint(&mut limit, 1, requests);
    field_varint(&mut limit, 2, unit);
    field_bytes(&mut status, 2, &limit);
    field_varint(&mut status, 3, remaining);
    if let Some(ns) = reset_ns {
        let mut d = Vec::new();
        field_varint(&mut d, 1, ns / S);
        field_varint(&mut d, 2, ns % S);
        field_bytes(&mut status, 4, &d);
    }
    field_bytes(&mut out, 2, &status);
    for (k, v) in headers {
        let mut h = Vec::new();
        field_bytes(&mut h, 1, k.as_bytes());
        field_bytes(&mut h, 2, v.as_bytes());
        field_bytes(&mut out, 3, &h);
    }
    out
}

struct Reader<'a>(&'a [u8], usize);

impl Reader<'_> {
    fn varint(&mut self) -> u64 {
        let mut v = 0;
        for i in 0..10 {
            let b = self.0[self.1];
            self.1 += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    fn fields(buf: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut r = Reader(buf, 0);
        let mut out = Vec::new();
        while r.1 < buf.len() {
            let key = r.varint();
            if key & 7 == 2 {
                let len = r.varint() as usize;
                out.push((key >> 3, 0, buf[r.1..r.1 + len].to_vec()));
                r.1 += len;
            } else {
                out.push((key >> 3, r.varint(), Vec::new()));
            }
        }
        out
    }
}

/// A decoded `RateLimitRequest`: domain, the first descriptor's entries, hits_addend.
#[derive(Debug, PartialEq)]
struct Asked {
    domain: String,
    entries: Vec<(String, String)>,
    hits: u64,
}

fn asked(call: &Callout) -> Asked {
    match &call.kind {
        CalloutKind::Grpc {
            service, method, ..
        } => {
            assert_eq!(service, "envoy.service.ratelimit.v3.RateLimitService");
            assert_eq!(method, "ShouldRateLimit");
        }
        other => panic!("expected a gRPC call, got {other:?}"),
    }
    let mut a = Asked {
        domain: String::new(),
        entries: Vec::new(),
        hits: 1,
    };
    for (f, v, b) in Reader::fields(call.body()) {
        match f {
            1 => a.domain = String::from_utf8(b).unwrap(),
            2 => {
                for (ef, _, eb) in Reader::fields(&b) {
                    assert_eq!(ef, 1);
                    let kv = Reader::fields(&eb);
                    a.entries.push((
                        String::from_utf8(kv[0].2.clone()).unwrap(),
                        String::from_utf8(kv[1].2.clone()).unwrap(),
                    ));
                }
            }
            3 => a.hits = v,
            _ => {}
        }
    }
    a
}

fn metric(host: &Host, name: &str) -> u64 {
    host.metric(&format!("switchyard.ratelimit.{name}"))
        .unwrap_or(0)
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn over_limit_is_a_429_with_the_services_numbers_and_headers() {
    let mut host = ratelimit(1, global_rule(json!({})));
    let out = hit(&mut host, 0, "alice");
    assert!(out.is_paused());
    let calls = host.callouts();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].cluster, "rls");
    assert_eq!(calls[0].timeout, Some(Duration::from_millis(20)));
    assert_eq!(
        asked(&calls[0]),
        Asked {
            domain: "edge".into(),
            entries: vec![("x-user-id".into(), "alice".into())],
            hits: 1
        }
    );
    host.answer(
        calls[0].id,
        CalloutReply::grpc_ok(answer(2, 10, 2, 0, Some(12 * S + 1), &[("x-rls", "over")])),
    )
    .unwrap();
    let out = host.outcome(out.stream).unwrap();
    assert!(!out.upstream_reached());
    assert_eq!(out.status(), Some(429));
    assert_eq!(out.response_header("retry-after"), Some("13"));
    assert_eq!(
        out.response_header("ratelimit-policy"),
        Some("\"g\";q=10;w=60")
    );
    assert_eq!(out.response_header("ratelimit"), Some("\"g\";r=0;t=13"));
    assert_eq!(out.response_header("x-rls"), Some("over"));
    assert!(out.response_body().contains("\"rule\":\"g\""));
    assert_eq!(metric(&host, "g.global_calls"), 1);
    assert_eq!(metric(&host, "g.global_over_limit"), 1);
    assert_eq!(metric(&host, "g.limited"), 1);
}

#[test]
fn ok_passes_with_headers_on_the_upstream_response() {
    let mut host = ratelimit(1, global_rule(json!({})));
    let out = hit(&mut host, 0, "bob");
    let id = host.callouts()[0].id;
    host.answer(
        id,
        CalloutReply::grpc_ok(answer(1, 10, 1, 9, Some(S / 2), &[("x-rls", "ok")])),
    )
    .unwrap();
    let out = host.outcome(out.stream).unwrap();
    assert!(out.upstream_reached());
    assert_eq!(out.status(), Some(200));
    assert_eq!(out.response_header("ratelimit"), Some("\"g\";r=9;t=1"));
    assert_eq!(out.response_header("x-rls"), Some("ok"));
    assert_eq!(metric(&host, "g.allowed"), 1);
    // A request without the key part is not asked about.
    let other = host.request().path("/api").send().unwrap();
    assert_eq!(other.status(), Some(200));
    assert!(host.callouts().is_empty());
}

fn failure(failure_mode: &str, reply: Option<CalloutReply>) -> (Host, Outcome) {
    let mut host = ratelimit(
        1,
        global_rule(json!({"service": {"failure_mode": failure_mode, "timeout": "30ms"}})),
    );
    let out = hit(&mut host, 0, "carol");
    let call = host.callouts().remove(0);
    assert_eq!(call.timeout, Some(Duration::from_millis(30)));
    match reply {
        Some(r) => host.answer(call.id, r).unwrap(),
        // No answer: the call times out when its timeout passes.
        None => host.advance(Duration::from_millis(30)).unwrap(),
    }
    let out = host.outcome(out.stream).unwrap();
    assert!(
        out.is_complete(),
        "the request must finish within the timeout"
    );
    (host, out)
}

#[test]
fn failures_follow_failure_mode() {
    let replies = || {
        vec![
            None,
            Some(CalloutReply::Failure),
            Some(CalloutReply::GrpcFailure {
                status: 14,
                message: "unavailable".into(),
            }),
            Some(CalloutReply::grpc_ok(b"\x0a\xff\xff".to_vec())),
            Some(CalloutReply::grpc_ok(Vec::new())),
        ]
    };
    for (i, reply) in replies().into_iter().enumerate() {
        let (host, out) = failure("allow", reply);
        assert_eq!(out.status(), Some(200), "case {i}");
        assert!(out.upstream_reached());
        assert_eq!(metric(&host, "g.global_failure_allowed"), 1);
    }
    for (i, reply) in replies().into_iter().enumerate() {
        let (host, out) = failure("deny", reply);
        assert_eq!(out.status(), Some(429), "case {i}");
        assert_eq!(out.response_header("retry-after"), Some("1"));
        assert!(!out.upstream_reached());
        assert_eq!(metric(&host, "g.global_failure_denied"), 1);
    }
}

#[test]
fn failure_mode_defaults_to_the_top_level_one() {
    let mut config = global_rule(json!({}));
    config["failure_mode"] = json!("deny");
    let mut host = ratelimit(1, config);
    let out = hit(&mut host, 0, "dave");
    let id = host.callouts()[0].id;
    host.answer(id, CalloutReply::Failure).unwrap();
    assert_eq!(host.outcome(out.stream).unwrap().status(), Some(429));
}

#[test]
fn unknown_cluster_is_a_failure_without_a_pause() {
    let mut host = Host::load("dist/ratelimit.wasm")
        .unwrap()
        .clusters(&["other"])
        .configure(global_rule(json!({"service": {"failure_mode": "deny"}})).to_string())
        .unwrap();
    let out = hit(&mut host, 0, "erin");
    assert_eq!(out.status(), Some(429));
    assert!(host.callouts().is_empty());
}

#[test]
fn local_tiers_reject_without_a_call() {
    let mut host = ratelimit(
        2,
        global_rule(json!({"limits": [{"requests": 2, "per": "1m"}]})),
    );
    for w in 0..2 {
        let out = hit(&mut host, w, "frank");
        let id = host.callouts()[0].id;
        host.answer(
            id,
            CalloutReply::grpc_ok(answer(1, 100, 2, 90, Some(30 * S), &[])),
        )
        .unwrap();
        let out = host.outcome(out.stream).unwrap();
        assert_eq!(out.status(), Some(200));
        // The tighter of the local tier and the service's limit is reported.
        let expect = format!("\"g\";r={};", 1 - w);
        assert!(
            out.response_header("ratelimit")
                .unwrap()
                .starts_with(&expect),
            "{:?}",
            out.response_header("ratelimit")
        );
    }
    let out = hit(&mut host, 0, "frank");
    assert_eq!(out.status(), Some(429));
    assert!(host.callouts().is_empty(), "a local rejection never calls");
    assert_eq!(metric(&host, "g.global_calls"), 2);
}

#[test]
fn a_lease_spends_n_hits_locally_with_one_call() {
    let mut host = ratelimit(1, global_rule(json!({"lease": 5})));
    let first = hit(&mut host, 0, "gina");
    let call = host.callouts().remove(0);
    assert_eq!(asked(&call).hits, 5);
    host.answer(
        call.id,
        CalloutReply::grpc_ok(answer(1, 100, 2, 95, Some(30 * S), &[])),
    )
    .unwrap();
    assert_eq!(host.outcome(first.stream).unwrap().status(), Some(200));
    for _ in 0..4 {
        let out = hit(&mut host, 0, "gina");
        assert_eq!(out.status(), Some(200));
        assert!(host.callouts().is_empty());
    }
    assert_eq!(metric(&host, "g.lease_hits"), 4);
    // The sixth needs a new lease.
    let sixth = hit(&mut host, 0, "gina");
    assert!(sixth.is_paused());
    assert_eq!(host.callouts().len(), 1);
    assert_eq!(metric(&host, "g.global_calls"), 2);
}

#[test]
fn a_lease_expires_when_the_service_window_resets() {
    let mut host = ratelimit(1, global_rule(json!({"lease": 5})));
    let first = hit(&mut host, 0, "hank");
    let id = host.callouts()[0].id;
    host.answer(
        id,
        CalloutReply::grpc_ok(answer(1, 100, 1, 95, Some(S / 10), &[])),
    )
    .unwrap();
    assert_eq!(host.outcome(first.stream).unwrap().status(), Some(200));
    host.advance(Duration::from_millis(100)).unwrap();
    let out = hit(&mut host, 0, "hank");
    assert!(
        out.is_paused(),
        "the leased hits belonged to the last window"
    );
}

#[test]
fn requests_wait_for_a_call_in_flight_instead_of_calling() {
    let mut host = ratelimit(1, global_rule(json!({"lease": 3})));
    let outs: Vec<Outcome> = (0..4).map(|_| hit(&mut host, 0, "ivy")).collect();
    assert!(outs.iter().all(Outcome::is_paused));
    // The first call's 3 hits serve 3 requests; the fourth sent its own call.
    let calls = host.callouts();
    assert_eq!(calls.len(), 2);
    assert_eq!(metric(&host, "g.global_coalesced"), 2);
    host.answer(
        calls[0].id,
        CalloutReply::grpc_ok(answer(1, 10, 2, 7, Some(30 * S), &[("x-rls", "a")])),
    )
    .unwrap();
    for (i, o) in outs.iter().take(3).enumerate() {
        let o = host.outcome(o.stream).unwrap();
        assert_eq!(o.status(), Some(200), "request {i}");
        assert_eq!(o.response_header("x-rls"), Some("a"));
    }
    assert!(!host.outcome(outs[3].stream).unwrap().is_complete());
    host.answer(
        calls[1].id,
        CalloutReply::grpc_ok(answer(2, 10, 2, 0, Some(30 * S), &[])),
    )
    .unwrap();
    assert_eq!(host.outcome(outs[3].stream).unwrap().status(), Some(429));
    // Waiters share an over-limit answer too.
    host.advance(Duration::from_secs(60)).unwrap();
    let outs: Vec<Outcome> = (0..3).map(|_| hit(&mut host, 0, "ivy")).collect();
    let calls = host.callouts();
    assert_eq!(calls.len(), 1);
    host.answer(
        calls[0].id,
        CalloutReply::grpc_ok(answer(2, 10, 2, 0, Some(5 * S), &[])),
    )
    .unwrap();
    for o in &outs {
        let o = host.outcome(o.stream).unwrap();
        assert_eq!(o.status(), Some(429));
        assert_eq!(o.response_header("retry-after"), Some("5"));
    }
    // ... and a failure, on timeout (after the reset: until then the over-limit answer is
    // remembered and nobody asks).
    host.advance(Duration::from_secs(5)).unwrap();
    let outs: Vec<Outcome> = (0..3).map(|_| hit(&mut host, 0, "ivy")).collect();
    host.advance(Duration::from_millis(20)).unwrap();
    for o in &outs {
        assert_eq!(host.outcome(o.stream).unwrap().status(), Some(200));
    }
    assert_eq!(metric(&host, "g.global_failure_allowed"), 3);
}

#[test]
fn waiters_get_failure_mode_when_the_dispatcher_goes_away() {
    let mut host = ratelimit(
        1,
        global_rule(json!({"lease": 4, "service": {"failure_mode": "deny"}})),
    );
    let outs: Vec<Outcome> = (0..3).map(|_| hit(&mut host, 0, "lena")).collect();
    assert_eq!(host.callouts().len(), 1);
    // The client of the request that sent the call disconnects; Envoy cancels its call.
    let gone = host.disconnect(outs[0].stream).unwrap();
    assert!(gone.reset);
    assert!(host.callouts().is_empty());
    for o in &outs[1..] {
        let o = host.outcome(o.stream).unwrap();
        assert_eq!(o.status(), Some(429), "waiters must not hang");
    }
    assert_eq!(metric(&host, "g.global_failure_denied"), 2);
    // A waiter that goes away is simply forgotten.
    let outs: Vec<Outcome> = (0..2).map(|_| hit(&mut host, 0, "lena")).collect();
    host.disconnect(outs[1].stream).unwrap();
    let id = host.callouts()[0].id;
    host.answer(
        id,
        CalloutReply::grpc_ok(answer(1, 10, 2, 6, Some(30 * S), &[])),
    )
    .unwrap();
    assert_eq!(host.outcome(outs[0].stream).unwrap().status(), Some(200));
    // Its unused hit went to the lease: 4 asked, 1 used, 3 left.
    for _ in 0..3 {
        assert_eq!(hit(&mut host, 0, "lena").status(), Some(200));
    }
    assert!(host.callouts().is_empty());
}

#[test]
fn an_over_limit_answer_is_remembered_until_the_service_resets() {
    let mut host = ratelimit(1, global_rule(json!({})));
    let first = hit(&mut host, 0, "kim");
    let calls = host.callouts();
    host.answer(
        calls[0].id,
        CalloutReply::grpc_ok(answer(2, 10, 2, 0, Some(10 * S), &[("x-rls", "over")])),
    )
    .unwrap();
    assert_eq!(host.outcome(first.stream).unwrap().status(), Some(429));
    // Until the reset the same key is rejected without asking: same numbers, same headers,
    // Retry-After counting down. Other keys still ask.
    host.advance(Duration::from_secs(4)).unwrap();
    let again = hit(&mut host, 0, "kim");
    assert!(
        !again.is_paused(),
        "no call while the service's rejection stands"
    );
    assert_eq!(again.status(), Some(429));
    assert_eq!(again.response_header("retry-after"), Some("6"));
    assert_eq!(again.response_header("x-rls"), Some("over"));
    assert_eq!(host.callouts().len(), 0);
    assert_eq!(metric(&host, "g.global_denied_remembered"), 1);
    assert_eq!(metric(&host, "g.global_calls"), 1);
    let other = hit(&mut host, 0, "lee");
    assert!(other.is_paused(), "another key asks the service");
    // After the reset the key asks again.
    host.advance(Duration::from_secs(7)).unwrap();
    let later = hit(&mut host, 0, "kim");
    assert!(
        later.is_paused(),
        "after the reset the service is asked again"
    );
}

#[test]
fn without_a_lease_every_request_is_its_own_call() {
    let mut host = ratelimit(1, global_rule(json!({})));
    for _ in 0..3 {
        hit(&mut host, 0, "jack");
    }
    let calls = host.callouts();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| asked(c).hits == 1));
}

/// A fixed-window service (Limitador's semantics: a call over the limit counts nothing):
/// `limit` hits per second. With `report_reset` it says when its window resets.
struct FakeService {
    limit: u64,
    report_reset: bool,
    counts: HashMap<u64, u64>,
}

impl FakeService {
    fn answer(&mut self, now_ns: u64, hits: u64) -> Vec<u8> {
        let window = now_ns / S;
        let count = self.counts.entry(window).or_default();
        let reset = Some((window + 1) * S - now_ns).filter(|_| self.report_reset);
        if *count + hits <= self.limit {
            *count += hits;
            answer(1, self.limit, 1, self.limit - *count, reset, &[])
        } else {
            answer(2, self.limit, 1, 0, reset, &[])
        }
    }
}

/// Drives `workers` workers for 6 seconds of virtual time in 10 ms steps, the service
/// answering every call at once. The load is the worst case for leases: in even windows each
/// worker sends one request just before the window ends (taking a lease it hardly uses), in
/// odd windows a burst of 40 requests per step arrives in the first 100 ms. Returns the largest
/// number of requests admitted in one service window (one second).
fn most_admitted_per_window(workers: usize, lease: u64, limit: u64, report_reset: bool) -> u64 {
    let mut host = ratelimit(workers, global_rule(json!({"lease": lease})));
    // Start off a window boundary, as a real clock would be.
    host.advance(Duration::from_millis(3)).unwrap();
    let mut service = FakeService {
        limit,
        report_reset,
        counts: HashMap::new(),
    };
    let mut admitted: HashMap<u64, u64> = HashMap::new();
    for _ in 0..600u64 {
        let now = host.now_nanos();
        let (window, offset_ms) = (now / S, (now % S) / 1_000_000);
        let n = match (window % 2, offset_ms) {
            (0, 980..=989) => workers,
            (1, 0..=99) => 40,
            _ => 0,
        };
        let mut pending = Vec::new();
        for i in 0..n {
            pending.push(hit(&mut host, i % workers, "kate"));
        }
        while let Some(call) = host.callouts().first().cloned() {
            let bytes = service.answer(host.now_nanos(), asked(&call).hits);
            host.answer(call.id, CalloutReply::grpc_ok(bytes)).unwrap();
        }
        for o in pending {
            let o = host.outcome(o.stream).unwrap();
            if o.status() == Some(200) {
                *admitted.entry(window).or_default() += 1;
            }
        }
        host.advance(Duration::from_millis(10)).unwrap();
    }
    admitted.values().copied().max().unwrap_or(0)
}

#[test]
fn lease_overshoot_stays_within_the_documented_bound() {
    let (workers, lease, limit) = (2usize, 10u64, 100u64);
    // Without leasing the limit is exact.
    let exact = most_admitted_per_window(workers, 1, limit, true);
    assert_eq!(exact, limit);
    // A lease ends at the service's window reset: no hit leaks into the next window.
    let with_reset = most_admitted_per_window(workers, lease, limit, true);
    // Without a reset time, a lease lives one window from its grant and leftover hits leak
    // into the next window: at most (lease - 1) per worker.
    let without_reset = most_admitted_per_window(workers, lease, limit, false);
    let bound = limit + (lease - 1) * workers as u64;
    eprintln!(
        "limit {limit}, lease {lease}, workers {workers}: most admitted per window: \
         no lease {exact}, lease with reset {with_reset}, lease without reset {without_reset} (bound {bound})"
    );
    assert_eq!(with_reset, limit);
    assert!(without_reset > limit, "the worst case should show the leak");
    assert!(without_reset <= bound, "{without_reset} > {bound}");
}
