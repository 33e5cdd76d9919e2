//! Native tests of the whole decision over an in-memory store with Envoy's CAS semantics.

use crate::bucket::Bucket;
use crate::config::parse;
use crate::engine::{Limiter, Outcome, Verdict};
use crate::response::{rate_limit_headers, rejection, shadow_header};
use std::cell::RefCell;
use switchyard_core::shared::{ensure_key, MemStore, SharedStore, StoreError};
use switchyard_core::RequestView;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * S;

fn limiter(json: &str) -> Limiter {
    Limiter::new(parse(json.as_bytes()).unwrap(), "test")
}

fn req(ip: &str, user: Option<&str>, path: &str) -> RequestView {
    let mut r = RequestView::new("GET", path).with_source(&format!("{ip}:4000"));
    if let Some(u) = user {
        r = r.with_header("x-user-id", u);
    }
    r
}

fn admitted(o: &Outcome) -> bool {
    !matches!(
        o.verdict,
        Verdict::Reject { .. } | Verdict::FailureDeny { .. }
    )
}

const TIERED: &str = r#"{"rules":[{"name":"per-ip","key":[{"client_ip":{}}],
  "limits":[{"requests":1,"per":"1s"},{"requests":5,"per":"10s"},{"requests":10,"per":"1m"}]}]}"#;

#[test]
fn tiered_limit_and_isolation_between_keys() {
    let l = limiter(TIERED);
    let store = MemStore::new();
    let a = req("10.0.0.1", None, "/");
    let b = req("10.0.0.2", None, "/");
    let o = l.decide(&store, &a, T0);
    assert!(admitted(&o));
    assert_eq!(o.counts[0].allowed, 1);
    let o = l.decide(&store, &a, T0 + 100 * MS);
    assert_eq!(
        o.verdict,
        Verdict::Reject {
            rule: 0,
            retry_after_ns: 900 * MS
        }
    );
    assert_eq!(o.counts[0].limited, 1);
    // Another client is unaffected.
    assert!(admitted(&l.decide(&store, &b, T0 + 100 * MS)));
    let rej = rejection(&l.settings, &o).unwrap();
    assert_eq!(rej.status, 429);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&rej.body).unwrap(),
        serde_json::json!({"error":"rate_limited","rule":"per-ip","retry_after":1})
    );
    assert!(rej.headers.contains(&("retry-after".into(), "1".into())));
}

#[test]
fn ietf_headers_report_the_tightest_tier() {
    let l = limiter(TIERED);
    let store = MemStore::new();
    let a = req("10.0.0.1", None, "/");
    // Requests 2s apart: the 1s tier is always full again, the 10s tier (+0.5/s) stays
    // level at 1 req/2s, the minute tier (1 token per 6s) drains.
    let mut last = None;
    for i in 0..4 {
        last = Some(l.decide(&store, &a, T0 + i * 2 * S));
        assert!(admitted(last.as_ref().unwrap()));
    }
    let h = rate_limit_headers(&l.settings, last.as_ref().unwrap());
    // After 4 requests: 1s tier r=0 (t=1); 10s tier r=4 (t=2); minute tier has used
    // 4 tokens and earned back 1 (6s elapsed): r=7, full again at 24s-6s = 18s.
    assert_eq!(
        h,
        vec![
            ("ratelimit-policy".into(), "\"per-ip\";q=1;w=1".into()),
            ("ratelimit".into(), "\"per-ip\";r=0;t=1".into()),
        ]
    );
    let store = MemStore::new();
    let l = limiter(&TIERED.replace(r#"{"requests":1,"per":"1s"},"#, ""));
    for i in 0..4 {
        last = Some(l.decide(&store, &a, T0 + i * 2 * S));
    }
    let h = rate_limit_headers(&l.settings, last.as_ref().unwrap());
    assert_eq!(h[1].1, "\"per-ip\";r=4;t=2");
    let legacy = limiter(&TIERED.replace(r#"{"rules""#, r#"{"headers":"legacy","rules""#));
    let o = legacy.decide(&MemStore::new(), &a, T0);
    assert_eq!(
        rate_limit_headers(&legacy.settings, &o),
        vec![
            ("x-ratelimit-limit".into(), "1".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), "1".into()),
        ]
    );
    let none = limiter(&TIERED.replace(r#"{"rules""#, r#"{"headers":"none","rules""#));
    let o = none.decide(&MemStore::new(), &a, T0);
    assert!(rate_limit_headers(&none.settings, &o).is_empty());
}

const TWO_RULES: &str = r#"{"rules":[
  {"name":"per-user","key":[{"header":"x-user-id"}],"limits":[{"requests":2,"per":"1h"}]},
  {"name":"global","limits":[{"requests":3,"per":"1h"}],"algorithm":"sliding_window"}]}"#;

#[test]
fn rejection_by_one_rule_consumes_nothing_from_another() {
    let l = limiter(TWO_RULES);
    let store = MemStore::new();
    let alice = req("1.1.1.1", Some("alice"), "/");
    let bob = req("1.1.1.1", Some("bob"), "/");
    assert!(admitted(&l.decide(&store, &alice, T0)));
    assert!(admitted(&l.decide(&store, &alice, T0 + S)));
    // Alice is over her per-user limit: many rejections must not use the global quota.
    for i in 0..50 {
        let o = l.decide(&store, &alice, T0 + 2 * S + i * MS);
        assert!(matches!(o.verdict, Verdict::Reject { rule: 0, .. }));
        assert_eq!(o.counts[1].allowed, 0);
    }
    // One global admission left (3 - alice's 2): bob gets it, then the global rule rejects
    // him, and that rejection must not consume bob's per-user quota.
    assert!(admitted(&l.decide(&store, &bob, T0 + 3 * S)));
    let o = l.decide(&store, &bob, T0 + 4 * S);
    assert!(
        matches!(o.verdict, Verdict::Reject { rule: 1, .. }),
        "{o:?}"
    );
    let h = rate_limit_headers(&l.settings, &o);
    assert_eq!(h[0].1, "\"per-user\";q=2;w=3600, \"global\";q=3;w=3600");
    assert_eq!(
        h[1].1, "\"per-user\";r=1;t=1799, \"global\";r=0;t=3600",
        "bob has 1 left (nothing consumed by the rejection)"
    );
}

type Hook = Box<dyn FnOnce(&MemStore)>;

/// A store that lets "another worker" act right after this request's first successful write.
struct RacingStore {
    inner: MemStore,
    after_first_write: RefCell<Option<Hook>>,
}

impl SharedStore for RacingStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)?;
        if let Some(hook) = self.after_first_write.borrow_mut().take() {
            hook(&self.inner);
        }
        Ok(())
    }
}

#[test]
fn commit_race_rolls_back_committed_rules() {
    let json = TWO_RULES;
    let l = limiter(json);
    let store = RacingStore {
        inner: MemStore::new(),
        after_first_write: RefCell::new(None),
    };
    let alice = req("1.1.1.1", Some("alice"), "/");
    assert!(admitted(&l.decide(&store.inner, &alice, T0)));
    assert!(admitted(&l.decide(
        &store.inner,
        &req("1.1.1.1", None, "/"),
        T0
    )));
    // Between alice's per-user commit and her global commit, another worker takes the last
    // global admission: alice must be rejected and her per-user admission undone.
    let other = limiter(json);
    *store.after_first_write.borrow_mut() = Some(Box::new(move |s: &MemStore| {
        let o = other.decide(s, &req("2.2.2.2", None, "/"), T0 + S);
        assert!(admitted(&o));
    }));
    let o = l.decide(&store, &alice, T0 + 2 * S);
    assert!(
        matches!(o.verdict, Verdict::Reject { rule: 1, .. }),
        "{o:?}"
    );
    assert_eq!(o.rollback_failures, 0);
    // Alice's per-user quota still has its second request: only the global rule blocks her.
    let o = l.decide(&store.inner, &alice, T0 + 3 * S);
    let h = rate_limit_headers(&l.settings, &o);
    assert!(h[1].1.starts_with("\"per-user\";r=1;"), "{h:?}");
}

#[test]
fn missing_key_part_skips_the_rule() {
    let l = limiter(
        r#"{"rules":[{"name":"u","key":[{"header":"x-user-id"},{"path":true}],"match":{"path":{"prefix":"/api"}},
           "limits":[{"requests":1,"per":"1h"}]}]}"#,
    );
    let store = MemStore::new();
    for i in 0..5 {
        let o = l.decide(&store, &req("1.1.1.1", None, "/api/x"), T0 + i);
        assert!(admitted(&o) && o.reports.is_empty());
        let o = l.decide(&store, &req("1.1.1.1", Some("a"), "/other"), T0 + i);
        assert!(admitted(&o) && o.reports.is_empty());
    }
    assert!(admitted(&l.decide(
        &store,
        &req("1.1.1.1", Some("a"), "/api/x"),
        T0
    )));
    assert!(!admitted(&l.decide(
        &store,
        &req("1.1.1.1", Some("a"), "/api/x"),
        T0
    )));
    // Same user, other endpoint: its own key.
    assert!(admitted(&l.decide(
        &store,
        &req("1.1.1.1", Some("a"), "/api/y"),
        T0
    )));
}

#[test]
fn trusted_hops_ignore_spoofed_entries() {
    let l = limiter(
        r#"{"rules":[{"name":"ip","key":[{"client_ip":{"trusted_hops":1}}],"limits":[{"requests":1,"per":"1h"}]}]}"#,
    );
    let store = MemStore::new();
    let via_proxy = |spoof: &str| {
        req("10.0.0.1", None, "/").with_header("x-forwarded-for", &format!("{spoof}, 7.7.7.7"))
    };
    assert!(admitted(&l.decide(&store, &via_proxy("1.2.3.4"), T0)));
    // The client changes the part of X-Forwarded-For it controls: still the same client.
    assert!(!admitted(&l.decide(&store, &via_proxy("5.6.7.8"), T0)));
}

#[test]
fn shadow_mode_never_rejects_but_reports() {
    let l = limiter(&TIERED.replace(r#"{"rules""#, r#"{"mode":"shadow","rules""#));
    let store = MemStore::new();
    let a = req("10.0.0.1", None, "/");
    assert!(l.decide(&store, &a, T0).verdict == Verdict::Allow);
    let o = l.decide(&store, &a, T0 + MS);
    assert!(matches!(o.verdict, Verdict::ShadowReject { rule: 0, .. }));
    assert_eq!(o.counts[0].shadow_limited, 1);
    assert!(rejection(&l.settings, &o).is_none());
    assert_eq!(
        shadow_header(&l.settings, &o).as_deref(),
        Some("\"per-ip\";retry_after=1")
    );
    // Would-be rejections consume nothing, exactly as enforcement would.
    assert_eq!(l.decide(&store, &a, T0 + S).verdict, Verdict::Allow);
}

#[test]
fn failure_modes() {
    for (mode, admit) in [("allow", true), ("deny", false)] {
        let l = limiter(&TIERED.replace(
            r#"{"rules""#,
            &format!(r#"{{"failure_mode":"{mode}","max_cas_retries":3,"rules""#),
        ));
        let store = MemStore::new();
        // As on_configure does: the buckets exist, so every write is a CAS.
        for i in 0..l.bucket_count() {
            ensure_key(&store, l.bucket_key(i), &Bucket::default().encode()).unwrap();
        }
        store.interfere(|_| true);
        let o = l.decide(&store, &req("1.1.1.1", None, "/"), T0);
        assert_eq!(admitted(&o), admit, "{mode}");
        // `allow` tries a second, longer round (4 × 3) before failing open.
        assert_eq!(o.counts[0].cas_retries, if admit { 3 + 12 } else { 3 });
        assert_eq!(o.counts[0].failure_allowed, u64::from(admit));
        assert_eq!(o.counts[0].failure_denied, u64::from(!admit));
        let store = MemStore::new();
        store.fail_with(Some(StoreError::Other("down".into())));
        let o = l.decide(&store, &req("1.1.1.1", None, "/"), T0);
        assert_eq!(admitted(&o), admit, "{mode}");
    }
}

#[test]
fn failure_allow_still_counts_requests_that_met_contention() {
    let l = limiter(
        r#"{"failure_mode":"allow","max_cas_retries":2,"rules":[{"name":"ip","key":[{"header":"x-k"}],
            "limits":[{"requests":1,"per":"1m"}]}]}"#,
    );
    let store = MemStore::new();
    for i in 0..l.bucket_count() {
        ensure_key(&store, l.bucket_key(i), &Bucket::default().encode()).unwrap();
    }
    let r = RequestView::new("GET", "/").with_header("x-k", "flooder");
    // The first round of CAS attempts all lose to "other workers"; later ones win.
    let mut lost = 0;
    store.interfere(move |_| {
        lost += 1;
        lost <= 3
    });
    let o = l.decide(&store, &r, T0);
    assert!(admitted(&o));
    assert_eq!(o.counts[0].failure_allowed, 0);
    assert_eq!(o.counts[0].allowed, 1);
    // It was counted: the limit of 1 per minute now rejects the next request.
    store.interfere(|_| false);
    assert!(!admitted(&l.decide(&store, &r, T0 + 1)));
}

#[test]
fn key_flood_stays_within_max_keys_and_spares_active_keys() {
    let l = limiter(
        r#"{"max_keys":1000,"rules":[{"name":"ip","key":[{"header":"x-k"}],
            "limits":[{"requests":10,"per":"1m"}]}]}"#,
    );
    let store = MemStore::new();
    let key = |k: &str| RequestView::new("GET", "/").with_header("x-k", k);
    let victims: Vec<String> = (0..50).map(|i| format!("victim-{i}")).collect();
    let mut slots = 0i64;
    let mut evicted_active = 0;
    // Each victim uses 5 of its 10; then 200k distinct flood keys arrive (one request each),
    // interleaved with the victims, all within the same second.
    for v in &victims {
        for _ in 0..5 {
            slots += l.decide(&store, &key(v), T0).slots_delta;
        }
    }
    for i in 0..200_000u64 {
        let o = l.decide(&store, &key(&format!("flood-{i}")), T0 + i * 1000);
        slots += o.slots_delta;
        evicted_active += o.evicted_active;
        assert!(slots <= 1000);
    }
    assert_eq!(slots, 1000);
    assert!(evicted_active > 150_000);
    // Bounded memory: 63 buckets, each at most 16 entries of ~40 bytes.
    assert_eq!(store.len(), 63);
    assert!(store.bytes() < 1000 * 80, "{}", store.bytes());
    // Every victim kept its state: exactly 5 more admitted, then rejected.
    let t = T0 + 200_000_000;
    for v in &victims {
        let n = (0..8)
            .filter(|_| admitted(&l.decide(&store, &key(v), t)))
            .count();
        assert_eq!(n, 5, "{v}");
    }
}

#[test]
fn idle_keys_are_reclaimed_without_losing_state() {
    let l = limiter(
        r#"{"max_keys":16,"rules":[{"name":"ip","key":[{"header":"x-k"}],"limits":[{"requests":1,"per":"1s"}]}]}"#,
    );
    let store = MemStore::new();
    let key = |k: u64| RequestView::new("GET", "/").with_header("x-k", &k.to_string());
    let mut evicted_active = 0;
    // 10k keys, one per 100ms: each key's state is idle 1s after its request.
    for i in 0..10_000u64 {
        let o = l.decide(&store, &key(i), T0 + i * 100 * MS);
        assert!(admitted(&o));
        evicted_active += o.evicted_active;
    }
    assert_eq!(evicted_active, 0);
}

mod effects {
    use super::*;
    use crate::global::GlobalCounts;
    use crate::metrics::{Effects, Event, Metric};
    use crate::response::{count_global, count_local, decision};
    use switchyard_core::{Flow, HeaderEdit, Stat};

    #[test]
    fn an_admitted_request_counts_and_keeps_its_headers_for_the_response() {
        let l = limiter(TIERED);
        let store = MemStore::new();
        let o = l.decide(&store, &req("10.0.0.1", None, "/"), T0);
        let mut e = Effects::new();
        count_local(&o, &mut e);
        assert_eq!(e.added(Stat::Of(0, Event::Allowed)), 1);
        assert_eq!(e.added(Stat::Of(0, Event::Limited)), 0);
        assert_eq!(e.added(Stat::Fixed(Metric::SlotsInUse)), 1);
        let d = decision(&l.settings, &o, &[], e);
        assert_eq!(d.effects.reply, None);
        assert_eq!(d.effects.flow, Flow::Continue);
        let names: Vec<&str> = d.on_response.iter().map(HeaderEdit::name).collect();
        assert_eq!(names, ["ratelimit-policy", "ratelimit"]);
        assert!(d
            .on_response
            .iter()
            .all(|h| matches!(h, HeaderEdit::Set(..))));
    }

    #[test]
    fn a_rejection_is_a_local_reply_with_the_services_headers_ours_winning() {
        let l = limiter(TIERED);
        let store = MemStore::new();
        let a = req("10.0.0.1", None, "/");
        l.decide(&store, &a, T0);
        let o = l.decide(&store, &a, T0 + 100 * MS);
        let service = [
            ("retry-after".to_string(), b"99".to_vec()),
            ("x-service".to_string(), b"yes".to_vec()),
        ];
        let mut e = Effects::new();
        count_local(&o, &mut e);
        assert_eq!(e.added(Stat::Of(0, Event::Limited)), 1);
        let d = decision(&l.settings, &o, &service, e);
        let reply = d.effects.reply.unwrap();
        assert_eq!((reply.status, reply.details), (429, "switchyard_ratelimit"));
        let retry: Vec<&[u8]> = reply
            .headers
            .iter()
            .filter(|(k, _)| k == "retry-after")
            .map(|(_, v)| v.as_slice())
            .collect();
        assert_eq!(retry, [b"1".as_slice()]);
        assert!(reply
            .headers
            .contains(&("x-service".into(), b"yes".to_vec())));
        assert!(reply.body.starts_with(b"{"));
        // Should the host refuse the reply, the response still gets the headers.
        assert!(d
            .on_response
            .contains(&HeaderEdit::add("x-service", b"yes".as_slice())));
    }

    #[test]
    fn shadow_mode_tags_the_response_instead_of_replying() {
        let l = limiter(
            r#"{"mode":"shadow","rules":[{"name":"r","key":[{"client_ip":{}}],
                "limits":[{"requests":1,"per":"1s"}]}]}"#,
        );
        let store = MemStore::new();
        let a = req("10.0.0.1", None, "/");
        l.decide(&store, &a, T0);
        let o = l.decide(&store, &a, T0 + 100 * MS);
        let mut e = Effects::new();
        count_local(&o, &mut e);
        assert_eq!(e.added(Stat::Of(0, Event::ShadowLimited)), 1);
        let d = decision(&l.settings, &o, &[], e);
        assert_eq!(d.effects.reply, None);
        assert_eq!(
            d.on_response.first(),
            Some(&HeaderEdit::set(
                "x-ratelimit-shadow",
                "\"r\";retry_after=1"
            ))
        );
    }

    #[test]
    fn global_counts_land_on_their_rules() {
        let mut e = Effects::new();
        let c = GlobalCounts {
            over_limit: 1,
            limited: 1,
            ..GlobalCounts::default()
        };
        count_global(&[(2, c)], &mut e);
        assert_eq!(e.added(Stat::Of(2, Event::GlobalOverLimit)), 1);
        assert_eq!(e.added(Stat::Of(2, Event::Limited)), 1);
        assert_eq!(e.stats.len(), 2);
    }
}
