//! Native tests of the effects the router plans: header edits, local answers, flow and stats.

use crate::config::parse_router_config;
use crate::metrics::{subject, subject_labels, Effects, Event, Metric, Metrics};
use crate::plan::{
    mirror_effects, plan_request, plan_response, reload_effects, version_effects, MirrorOutcome,
    PendingMirror, Reload, RequestPlan, Shown, DETAILS, EXPLAIN_HEADER, VERSION_HEADER,
};
use crate::table::{Matched, Table, NOT_FOUND_BODY};
use serde_json::{json, Value};
use switchyard_core::metrics::Metric as _;
use switchyard_core::routing::{CLUSTER_HEADER, ROUTE_HEADER};
use switchyard_core::{Flow, HeaderEdit, LocalReply, RequestView, Stat, StatWrite};

fn table(v: Value) -> Table {
    parse_router_config(v.to_string().as_bytes()).unwrap().table
}

/// Routes of every kind, with header operations on each.
fn kinds() -> Table {
    table(json!({
        "routes": [
            {"name": "health", "match": {"path": {"exact": "/healthz"}},
             "action": {"respond": {"status": 200, "body": "ok",
                                    "headers": {"content-type": "text/plain", "x-drop": "1", "x-keep": "old"}},
                        "response_headers": {"remove": ["x-drop"], "set": {"x-keep": "new"},
                                             "append": {"x-more": "m"}}}},
            {"name": "old-docs", "match": {"path": {"prefix": "/docs/v1/"}},
             "action": {"redirect": {"path_prefix": "/docs/v2/", "status": 301},
                        "response_headers": {"set": {"cache-control": "no-store"}}}},
            {"name": "users", "match": {"path": {"template": "/users/{id}"}},
             "action": {"cluster": "users", "rewrite": {"path": "/v1/users/{id}", "host": "users.internal"},
                        "request_headers": {"set": {"x-route": "users"}, "append": {"x-tag": "a"},
                                            "remove": ["x-debug"]},
                        "response_headers": {"set": {"x-served-by": "users"}, "remove": ["server"],
                                             "append": {"x-via": "router"}}}},
            {"name": "shadow", "match": {"path": {"prefix": "/search"}},
             "action": {"cluster": "search",
                        "mirror": {"cluster": "search-next", "percent": 100, "max_body_bytes": 4}}}
        ],
        "default": {"cluster": "web"}
    }))
}

fn no_default() -> Table {
    table(json!({"routes": [
        {"name": "a", "match": {"path": {"exact": "/a"}}, "action": {"cluster": "x"}}
    ]}))
}

fn get(path: &str) -> RequestView {
    RequestView::new("GET", path)
        .with_authority("shop.example.com")
        .with_header(":scheme", "http")
}

fn plan(t: &Table, path: &str, shown: &Shown) -> (Matched, RequestPlan) {
    let d = t.decide(&get(path), &mut || 0, false);
    let matched = d.matched;
    (matched, plan_request(t, d, shown, CLUSTER_HEADER))
}

fn set(k: &str, v: &str) -> HeaderEdit {
    HeaderEdit::set(k, v)
}

/// Header values as text, for comparing lists.
fn text(headers: &[(String, Vec<u8>)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()))
        .collect()
}

fn events(e: &Effects, subject: usize) -> Vec<(Event, i64)> {
    e.stats
        .iter()
        .filter_map(|w| match w {
            StatWrite::Add(Stat::Of(s, ev), n) if *s == subject => Some((*ev, *n)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_forward_sets_the_record_rewrites_and_request_headers_in_order() {
    let t = kinds();
    let (matched, p) = plan(&t, "/users/7?x=1", &Shown::default());
    assert_eq!(matched, Matched::Route(2));
    assert!(p.forwarded);
    assert_eq!(p.mirror, None);
    let e = &p.effects;
    assert_eq!(
        e.request,
        vec![
            set(CLUSTER_HEADER, "users"),
            set(ROUTE_HEADER, "users"),
            set(":path", "/v1/users/7?x=1"),
            set(":authority", "users.internal"),
            HeaderEdit::remove("x-debug"),
            set("x-route", "users"),
            HeaderEdit::add("x-tag", "a"),
        ]
    );
    assert!(e.response.is_empty());
    assert_eq!(e.reply, None);
    assert_eq!(e.flow, Flow::Continue);
    assert_eq!(events(e, 2), vec![(Event::Routed, 1)]);
    assert_eq!(e.stats.len(), 1);
}

#[test]
fn a_forward_to_the_default_counts_under_route_default() {
    let t = kinds();
    let (matched, p) = plan(&t, "/elsewhere", &Shown::default());
    assert_eq!(matched, Matched::Default);
    let default = t.routes().len();
    assert_eq!(subject(&t, matched), Some(default));
    assert_eq!(
        p.effects.request,
        vec![set(CLUSTER_HEADER, "web"), set(ROUTE_HEADER, "default")]
    );
    assert_eq!(events(&p.effects, default), vec![(Event::Routed, 1)]);
}

#[test]
fn the_response_of_a_forward_gets_the_action_headers_then_explain_and_version() {
    let t = kinds();
    let e = plan_response(&t, Matched::Route(2), &Shown::default());
    assert_eq!(
        e.response,
        vec![
            HeaderEdit::remove("server"),
            set("x-served-by", "users"),
            HeaderEdit::add("x-via", "router"),
        ]
    );
    assert!(e.request.is_empty() && e.stats.is_empty() && e.reply.is_none());
    let shown = Shown::new(Some("route=users".into()), 3, true);
    let e = plan_response(&t, Matched::Default, &shown);
    assert_eq!(
        e.response,
        vec![
            set(EXPLAIN_HEADER, "v3 route=users"),
            set(VERSION_HEADER, "3")
        ]
    );
    // Neither header unless configured.
    assert!(plan_response(&t, Matched::Default, &Shown::new(None, 3, false)).is_empty());
}

#[test]
fn a_redirect_answers_locally_and_clears_the_record() {
    let t = kinds();
    let shown = Shown::new(None, 2, true);
    let (_, p) = plan(&t, "/docs/v1/intro?lang=en", &shown);
    assert!(!p.forwarded);
    let e = &p.effects;
    assert_eq!(
        e.request,
        vec![
            HeaderEdit::remove(CLUSTER_HEADER),
            HeaderEdit::remove(ROUTE_HEADER)
        ]
    );
    let want = LocalReply::new(301, DETAILS)
        .header("location", "http://shop.example.com/docs/v2/intro?lang=en")
        .header("cache-control", "no-store")
        .header(VERSION_HEADER, "2");
    assert_eq!(e.reply, Some(want));
    // A refused reply lets the request go on.
    assert_eq!(e.flow, Flow::Continue);
    assert!(e.response.is_empty());
    assert_eq!(events(e, 1), vec![(Event::Redirected, 1)]);
}

#[test]
fn a_direct_response_merges_response_headers_remove_set_append() {
    let t = kinds();
    let shown = Shown::new(Some("why".into()), 0, false);
    let (_, p) = plan(&t, "/healthz", &shown);
    let reply = p.effects.reply.clone().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.details, "switchyard_router");
    assert_eq!(reply.body, b"ok");
    assert_eq!(
        text(&reply.headers),
        vec![
            ("content-type", "text/plain"),
            ("x-keep", "new"),
            ("x-more", "m"),
            (EXPLAIN_HEADER, "v0 why"),
        ]
    );
    assert_eq!(events(&p.effects, 0), vec![(Event::Responded, 1)]);
}

#[test]
fn no_route_is_a_404_counted_in_no_route_only() {
    let t = no_default();
    let (matched, p) = plan(&t, "/b", &Shown::new(None, 5, true));
    assert_eq!(matched, Matched::Nothing);
    assert_eq!(subject(&t, matched), None);
    let e = &p.effects;
    let want = LocalReply::new(404, DETAILS)
        .header("content-type", "text/plain")
        .header(VERSION_HEADER, "5")
        .body(NOT_FOUND_BODY);
    assert_eq!(e.reply, Some(want));
    assert_eq!(
        e.stats,
        vec![StatWrite::Add(Stat::Fixed(Metric::NoRoute), 1)]
    );
    assert_eq!(
        e.request,
        vec![
            HeaderEdit::remove(CLUSTER_HEADER),
            HeaderEdit::remove(ROUTE_HEADER)
        ]
    );
}

#[test]
fn the_explain_header_is_cut_on_a_character_boundary() {
    let long = "é".repeat(1000);
    let e = plan_response(
        &no_default(),
        Matched::Nothing,
        &Shown::new(Some(long), 1, false),
    );
    let [HeaderEdit::Set(name, value)] = e.response.as_slice() else {
        panic!("{:?}", e.response)
    };
    assert_eq!(name, EXPLAIN_HEADER);
    assert!(value.len() <= 1024, "{}", value.len());
    let text = String::from_utf8(value.clone()).unwrap();
    assert!(text.starts_with("v1 é") && text.ends_with("é..."), "{text}");
}

#[test]
fn a_mirror_copies_the_edited_request_without_framing_or_record() {
    let t = kinds();
    let (_, p) = plan(&t, "/search?q=1", &Shown::default());
    let plan = p.mirror.clone().unwrap();
    assert_eq!(plan.cluster, "search-next");
    let h = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let request = vec![
        h(":authority", "shop.example.com"),
        h(":path", "/search?q=1"),
        h("content-length", "3"),
        h("connection", "keep-alive"),
        h(CLUSTER_HEADER, "search"),
        h(ROUTE_HEADER, "shadow"),
        h("x-user", "u"),
    ];
    let mut m = PendingMirror::new(plan, request, CLUSTER_HEADER);
    assert_eq!(
        text(&m.headers),
        vec![
            (":authority", "shop.example.com-shadow"),
            (":path", "/search?q=1"),
            ("x-user", "u"),
        ]
    );
    // max_body_bytes 4: a chunk that would pass it is refused and the copy is skipped.
    assert!(m.push(b"abc"));
    assert!(!m.push(b"de"));
    assert_eq!(m.body, b"abc");
    assert!(m.push(b"d"));
}

#[test]
fn mirror_outcomes_count_per_route_or_fixed() {
    assert_eq!(
        mirror_effects(MirrorOutcome::Sent, Some(3)).stats,
        vec![StatWrite::Add(Stat::Of(3, Event::Mirrored), 1)]
    );
    assert_eq!(
        mirror_effects(MirrorOutcome::Failed, Some(3)).stats,
        vec![StatWrite::Add(Stat::Fixed(Metric::MirrorFailed), 1)]
    );
    assert_eq!(
        mirror_effects(MirrorOutcome::Skipped, None).stats,
        vec![StatWrite::Add(Stat::Fixed(Metric::MirrorSkipped), 1)]
    );
    let e = mirror_effects(MirrorOutcome::Sent, Some(0));
    assert!(e.request.is_empty() && e.response.is_empty() && e.reply.is_none());
    // Mirroring never edits or holds the request.
    assert_eq!(e.flow, Flow::Continue);
}

#[test]
fn reload_outcomes_count_and_move_the_version_gauge() {
    let fixed = |m| Stat::Fixed(m);
    assert_eq!(
        reload_effects(Reload::Failed).added(fixed(Metric::ReloadsFailed)),
        1
    );
    assert_eq!(
        reload_effects(Reload::NotModified).added(fixed(Metric::ReloadsNotModified)),
        1
    );
    assert_eq!(
        reload_effects(Reload::Rejected).added(fixed(Metric::ReloadsRejected)),
        1
    );
    assert_eq!(
        reload_effects(Reload::Accepted(7)).stats,
        vec![
            StatWrite::Add(fixed(Metric::ReloadsOk), 1),
            StatWrite::Set(fixed(Metric::TableVersion), 7),
        ]
    );
    assert_eq!(
        version_effects(0).stats,
        vec![StatWrite::Set(fixed(Metric::TableVersion), 0)]
    );
}

#[test]
fn stat_names_are_the_documented_ones() {
    let fixed: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(
        fixed,
        [
            "reloads_ok",
            "reloads_rejected",
            "reloads_not_modified",
            "reloads_failed",
            "no_route",
            "mirror_skipped",
            "mirror_failed",
            "table_version",
        ]
    );
    assert_eq!(
        Metric::TableVersion.kind(),
        switchyard_core::abi::MetricKind::Gauge
    );
    assert_eq!(
        Metric::NoRoute.kind(),
        switchyard_core::abi::MetricKind::Counter
    );
    let t = kinds();
    let labels: Vec<String> = subject_labels(&t).collect();
    assert_eq!(
        labels,
        [
            "route.health",
            "route.old-docs",
            "route.users",
            "route.shadow",
            "route.default"
        ]
    );
    // Natively no stat is defined; the names are still formed.
    let m = Metrics::new("router");
    m.set_subjects(subject_labels(&t), &[]);
    let name = |s| m.full_name(s).unwrap();
    assert_eq!(
        name(Stat::Of(2, Event::Mirrored)),
        "switchyard.router.route.users.mirrored"
    );
    assert_eq!(
        name(Stat::Of(4, Event::Routed)),
        "switchyard.router.route.default.routed"
    );
    assert_eq!(
        name(Stat::Fixed(Metric::TableVersion)),
        "switchyard.router.table_version"
    );
    let events: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(events, ["routed", "redirected", "responded", "mirrored"]);
}
