//! The request side as pure functions: whether a request is this filter's at all
//! ([`verdict`]), which key and start position it gets ([`keying`]), and, from the health / load /
//! latency snapshot, the whole [`SelectionPlan`] ([`plan_selection`]): the ordered host list
//! with fallbacks, its [`Effects`] (the host header, the counters), the debug header text and
//! the in-flight bookkeeping. No host calls: the glue (`filter`) reads the facts, asks here and
//! hands the effects to `host::apply`.
//!
//! Times are nanoseconds of the host clock (`host::now_nanos()`), passed in.

use crate::config::{Config, Host, NoKey, Output, P2c};
use crate::metrics::{Effects, Event, Metric, Subjects};
use crate::output::header_value;
use crate::p2c::{self, Ewma};
use crate::select::{select, Loads, Selection};
use crate::table::Table;
use std::collections::{BTreeMap, HashMap};
use switchyard_core::hash::stable_hash64;
use switchyard_core::HeaderEdit;

/// One host set and its table, built once per configuration or host-set change. Requests hold
/// an `Rc` to the set they started with, so a rebuild never changes a request's indices.
pub struct HostSet {
    pub hosts: Vec<Host>,
    pub table: Table,
    /// Each host's stat subject (its `host.<h>.*` counters), numbered by `subjects`.
    pub subjects: Vec<usize>,
    /// Version of the shared `hosts_from` record this set came from (0: configured hosts).
    pub version: u64,
}

impl HostSet {
    /// Builds the table; `subjects` numbers the hosts' stats (new hosts get new numbers).
    pub fn new(
        config: &Config,
        hosts: Vec<Host>,
        version: u64,
        subjects: &mut Subjects,
    ) -> HostSet {
        let table = Table::for_config(config, &hosts);
        let subjects = hosts.iter().map(|h| subjects.subject(&h.address)).collect();
        HostSet {
            hosts,
            table,
            subjects,
            version,
        }
    }

    /// Counts `event` of host `h` of this set.
    pub fn count(&self, fx: &mut Effects, h: usize, event: Event) {
        if let Some(subject) = self.subjects.get(h) {
            fx.count_of(*subject, event, 1);
        }
    }

    pub fn host_index(&self, address: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.address == address)
    }

    fn address(&self, h: usize) -> Option<&str> {
        self.hosts.get(h).map(|x| x.address.as_str())
    }
}

/// Whether the filter acts on a request, from the routing record's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Routed to a cluster that is not ours: no host choice, no in-flight charge, no health
    /// record. Only a client-sent host choice is removed (`remove_header`, header mode), so it
    /// never reaches a load balancer; counted in `other_cluster`.
    OtherCluster { remove_header: Option<&'a str> },
    /// Ours (or no `clusters` restriction): pick a host.
    Act,
}

impl Verdict<'_> {
    /// What the verdict does by itself: for another cluster's request, the client-sent host
    /// choice removed and `other_cluster` counted; nothing for ours.
    pub fn effects(&self) -> Effects {
        let mut fx = Effects::new();
        if let Verdict::OtherCluster { remove_header } = self {
            fx.count(Metric::OtherCluster);
            fx.request.extend(remove_header.map(HeaderEdit::remove));
        }
        fx
    }
}

/// `cluster` is the routing record's cluster (`None`: the request carries no record).
pub fn verdict<'a>(config: &'a Config, cluster: Option<&str>) -> Verdict<'a> {
    let Some(own) = &config.clusters else {
        return Verdict::Act;
    };
    if cluster.is_some_and(|c| own.iter().any(|o| o == c)) {
        return Verdict::Act;
    }
    let remove_header = match &config.output {
        Output::Header(name) => Some(name.as_str()),
        Output::OriginalDst => None,
    };
    Verdict::OtherCluster { remove_header }
}

/// The key a request is placed by: the key source used, its hash, and (without a key) where
/// the rotation of the host list starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keying {
    /// The key source's label (`header:x-user-id`), `none` without a key.
    pub label: String,
    pub hash: Option<u64>,
    /// Without a key: the rotation's start (round robin counter, or a random position).
    pub start: u64,
}

impl Keying {
    /// Without a key the worker's round-robin counter advances (also for `no_key: random`).
    pub fn advances_round_robin(&self) -> bool {
        self.hash.is_none()
    }

    /// The key's host preference order. Without a key it is a rotation of the host list, so
    /// health skips and the load bound still apply.
    pub fn order<'a>(&self, set: &'a HostSet) -> Box<dyn Iterator<Item = usize> + 'a> {
        let n = set.hosts.len();
        match self.hash {
            Some(k) => Box::new(set.table.walk(k)),
            None => {
                let first = (self.start % n.max(1) as u64) as usize;
                Box::new((0..n).map(move |j| (first + j) % n))
            }
        }
    }
}

/// `key` is the first present key source (its index in `hash_key`, its value);
/// `round_robin` the worker's counter.
pub fn keying(config: &Config, key: Option<(usize, &str)>, round_robin: u64, now: u64) -> Keying {
    match key {
        Some((i, value)) => Keying {
            label: config
                .hash_key
                .0
                .get(i)
                .map(|s| s.label())
                .unwrap_or_default(),
            hash: Some(stable_hash64(value.as_bytes())),
            start: 0,
        },
        None => Keying {
            label: "none".to_string(),
            hash: None,
            start: match config.no_key {
                NoKey::RoundRobin => round_robin,
                NoKey::Random => {
                    stable_hash64(&[now.to_le_bytes(), round_robin.to_le_bytes()].concat())
                }
            },
        },
    }
}

/// `p2c_ewma`: what the power of two choices decides on.
pub struct P2cSnapshot<'a> {
    /// The shared latency estimates (empty when unreadable).
    pub ewma: &'a BTreeMap<String, Ewma>,
    /// This worker's in-flight requests per host address.
    pub in_flight: &'a HashMap<String, u64>,
    /// Two uniform random draws.
    pub draws: (u64, u64),
}

/// The state a selection is made on.
pub struct Snapshot<'a> {
    /// Which hosts may be picked (indexed like the set; all `true` without `health`).
    pub healthy: &'a [bool],
    /// Bounded loads: the in-flight counts, read inside the admission CAS. `None` without
    /// `bounded_load` or when the counts are unavailable (fail open: no bound).
    pub loads: Option<Loads<'a>>,
    /// `p2c_ewma` only.
    pub p2c: Option<P2cSnapshot<'a>>,
    pub now: u64,
}

/// Everything one request's host choice does.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionPlan {
    pub selection: Selection,
    /// The listed hosts' addresses: chosen first, then fallbacks.
    pub addresses: Vec<String>,
    /// What the request path does: the counters and, with the header output, the host header
    /// (always written, also empty: a client-sent value never reaches the load balancer).
    pub effects: Effects,
    /// ORIGINAL_DST output: the chosen host, for `set_envoy_filter_state` (a foreign function
    /// the glue calls, not a header edit).
    pub original_dst: Option<String>,
    /// The debug header's value (with `debug_header` only): see [`explain_effects`].
    pub explain: Option<String>,
    /// Bounded loads: the host whose shared in-flight count this request takes (released once
    /// when the stream ends).
    pub hold_load: Option<String>,
    /// `p2c_ewma`: the host whose per-worker in-flight count this request takes.
    pub hold_in_flight: Option<String>,
}

/// Hosts listed after the chosen one: none for ORIGINAL_DST (one address only).
pub fn fallbacks(config: &Config) -> usize {
    match config.output {
        Output::Header(_) => config.fallbacks as usize,
        Output::OriginalDst => 0,
    }
}

/// The plan for one request of ours, on `snap`.
pub fn plan_selection(
    config: &Config,
    set: &HostSet,
    keying: &Keying,
    snap: &Snapshot<'_>,
) -> SelectionPlan {
    let fallbacks = fallbacks(config);
    let (selection, p2c_note) = match (&config.p2c, &snap.p2c) {
        (Some(p), Some(ps)) => {
            choose_p2c(set, snap.healthy, keying.hash, p, ps, fallbacks, snap.now)
        }
        _ => (
            select(keying.order(set), snap.healthy, snap.loads, fallbacks),
            None,
        ),
    };
    let addresses: Vec<String> = selection
        .hosts
        .iter()
        .filter_map(|h| set.address(*h))
        .map(str::to_string)
        .collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let mut effects = selection_effects(set, keying, &selection);
    let original_dst = match &config.output {
        Output::Header(name) => {
            effects
                .request
                .push(HeaderEdit::set(name.as_str(), header_value(&refs)));
            None
        }
        Output::OriginalDst => addresses.first().cloned(),
    };
    let explain = config.debug_header.as_ref().map(|_| {
        let hash = keying.hash.map_or("-".to_string(), |h| format!("{h:016x}"));
        let chosen = refs.first().copied().unwrap_or("-");
        let mut reason = if keying.hash.is_none() {
            format!("no_key,{}", selection.reason())
        } else {
            selection.reason()
        };
        if let Some(note) = &p2c_note {
            reason = format!("{reason}; {note}");
        }
        format!(
            "key={}; hash={hash}; host={chosen}; reason={reason}; order={}",
            keying.label,
            header_value(&refs)
        )
    });
    let chosen = addresses.first().cloned();
    let is_p2c = config.p2c.is_some() && snap.p2c.is_some();
    SelectionPlan {
        hold_load: chosen.clone().filter(|_| snap.loads.is_some() && !is_p2c),
        hold_in_flight: chosen.filter(|_| is_p2c),
        selection,
        addresses,
        effects,
        original_dst,
        explain,
    }
}

/// The counters of one selection.
fn selection_effects(set: &HostSet, keying: &Keying, sel: &Selection) -> Effects {
    let mut fx = Effects::new();
    if keying.hash.is_none() {
        fx.count(Metric::NoKey);
    }
    if let Some(c) = sel.chosen() {
        set.count(&mut fx, c, Event::Picks);
    }
    for h in &sel.spilled {
        set.count(&mut fx, *h, Event::Spills);
    }
    for h in &sel.health_skipped {
        set.count(&mut fx, *h, Event::HealthSkips);
    }
    if sel.all_unhealthy {
        fx.count(Metric::AllUnhealthy);
    }
    if sel.over_capacity {
        fx.count(Metric::OverCapacity);
    }
    fx
}

/// The response side of `debug_header`: the plan's explanation on the response.
pub fn explain_effects(config: &Config, explain: &str) -> Effects {
    let mut fx = Effects::new();
    if let Some(name) = &config.debug_header {
        fx.response.push(HeaderEdit::set(name.as_str(), explain));
    }
    fx
}

/// `p2c_ewma`: the power of two choices over the healthy hosts on the latency estimates and
/// this worker's in-flight counts. Returns the selection and its debug note.
fn choose_p2c(
    set: &HostSet,
    healthy: &[bool],
    key_hash: Option<u64>,
    p: &P2c,
    snap: &P2cSnapshot<'_>,
    fallbacks: usize,
    now: u64,
) -> (Selection, Option<String>) {
    let mut eligible: Vec<usize> = (0..set.hosts.len())
        .filter(|h| healthy.get(*h).copied().unwrap_or(true))
        .collect();
    let all_unhealthy = eligible.is_empty();
    if all_unhealthy {
        eligible = (0..set.hosts.len()).collect();
    }
    let costs: Vec<f64> = set
        .hosts
        .iter()
        .map(|h| {
            p2c::cost(
                snap.ewma.get(&h.address),
                snap.in_flight.get(&h.address).copied().unwrap_or(0),
                now,
                p.decay_ns,
            )
        })
        .collect();
    let weights: Vec<u32> = set.hosts.iter().map(|h| h.weight).collect();
    let home = match (p.affinity, key_hash) {
        (Some(k), Some(hash)) => set.table.walk(hash).next().map(|h| (h, k)),
        _ => None,
    };
    let (r1, r2) = snap.draws;
    let Some(choice) = p2c::choose(&eligible, &weights, &costs, r1, r2, home, fallbacks) else {
        return (Selection::default(), None);
    };
    let note = choice
        .candidates
        .iter()
        .map(|(h, c)| format!("{}={:.3}ms", set.address(*h).unwrap_or("-"), c / 1e6))
        .collect::<Vec<_>>()
        .join(",");
    let selection = Selection {
        hosts: choice.order,
        all_unhealthy,
        ..Default::default()
    };
    (
        selection,
        Some(format!("{}; candidates={note}", choice.reason)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::{Flow, Stat, StatWrite};

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"hosts": [{{"address": "10.0.0.1:80"}}, {{"address": "10.0.0.2:80"}},
                {{"address": "10.0.0.3:80"}}, {{"address": "10.0.0.4:80"}}],
               "hash_key": [{{"header": "x-user-id"}}], "debug_header": "x-hash-explain"{extra}}}"#
        );
        Config::parse(json.as_bytes()).unwrap()
    }

    fn set(c: &Config) -> HostSet {
        HostSet::new(c, c.hosts.clone(), 0, &mut Subjects::default())
    }

    /// The stat writes of `fx`, each an add of 1 (host subjects are host indices in `set`).
    fn counted(fx: &Effects) -> Vec<Stat<Metric, Event>> {
        fx.stats
            .iter()
            .map(|w| match w {
                StatWrite::Add(s, 1) => *s,
                other => panic!("not a count of one: {other:?}"),
            })
            .collect()
    }

    fn plan(
        c: &Config,
        key: Option<&str>,
        healthy: &[bool],
        loads: Option<Loads>,
    ) -> SelectionPlan {
        let s = set(c);
        let k = keying(c, key.map(|v| (0, v)), 0, 1);
        let snap = Snapshot {
            healthy,
            loads,
            p2c: None,
            now: 1,
        };
        plan_selection(c, &s, &k, &snap)
    }

    fn address(c: &Config, h: usize) -> String {
        c.hosts[h].address.clone()
    }

    #[test]
    fn other_cluster_requests_are_left_alone() {
        let c = config(r#", "clusters": ["web"]"#);
        assert_eq!(verdict(&c, Some("web")), Verdict::Act);
        for other in [Some("api"), None] {
            let v = verdict(&c, other);
            assert_eq!(
                v,
                Verdict::OtherCluster {
                    remove_header: Some("x-upstream-host")
                }
            );
            // The client-sent host choice is removed, the request counted, nothing else.
            let fx = v.effects();
            assert_eq!(counted(&fx), [Stat::Fixed(Metric::OtherCluster)]);
            assert_eq!(fx.request, [HeaderEdit::remove("x-upstream-host")]);
            assert!(fx.response.is_empty() && fx.reply.is_none());
            assert_eq!(fx.flow, Flow::Continue);
        }
        let dst = config(r#", "clusters": ["web"], "output": {"original_dst": true}"#);
        let v = verdict(&dst, Some("api"));
        assert_eq!(
            v,
            Verdict::OtherCluster {
                remove_header: None
            }
        );
        assert!(v.effects().request.is_empty());
        assert!(verdict(&c, Some("web")).effects().is_empty());
        // Without `clusters` every request is ours.
        assert_eq!(verdict(&config(""), Some("api")), Verdict::Act);
        assert_eq!(verdict(&config(""), None), Verdict::Act);
    }

    #[test]
    fn primary_pick_then_fallbacks_in_the_keys_order() {
        let c = config(r#", "fallbacks": 2"#);
        let s = set(&c);
        let hash = stable_hash64(b"alice");
        let order: Vec<usize> = s.table.walk(hash).collect();
        let p = plan(&c, Some("alice"), &[true; 4], None);
        assert_eq!(p.selection.hosts, order[..3]);
        let want: Vec<String> = order[..3].iter().map(|h| address(&c, *h)).collect();
        assert_eq!(p.addresses, want);
        // The host header carries the list; nothing else is edited and the request goes on.
        assert_eq!(
            p.effects.request,
            [HeaderEdit::set("x-upstream-host", want.join(","))]
        );
        assert!(p.effects.response.is_empty() && p.effects.reply.is_none());
        assert_eq!(p.effects.flow, Flow::Continue);
        assert_eq!(p.original_dst, None);
        assert_eq!(
            p.explain.as_deref(),
            Some(
                format!(
                    "key=header:x-user-id; hash={hash:016x}; host={}; reason=primary; order={}",
                    want[0],
                    want.join(",")
                )
                .as_str()
            )
        );
        assert_eq!(counted(&p.effects), [Stat::Of(order[0], Event::Picks)]);
        assert_eq!((p.hold_load, p.hold_in_flight), (None, None));
        // The explanation goes on the response, under `debug_header`.
        let explain = p.explain.unwrap_or_default();
        let fx = explain_effects(&c, &explain);
        assert_eq!(fx.response, [HeaderEdit::set("x-hash-explain", explain)]);
        assert!(fx.request.is_empty() && fx.stats.is_empty());
        // The primary is what tools compute for the key.
        assert_eq!(
            crate::primary_host(&c, "alice").as_deref(),
            Some(want[0].as_str())
        );
    }

    #[test]
    fn original_dst_lists_only_the_chosen_host() {
        let c = config(r#", "output": {"original_dst": true}"#);
        let p = plan(&c, Some("alice"), &[true; 4], None);
        assert_eq!(p.selection.hosts.len(), 1);
        assert_eq!(p.original_dst, Some(p.addresses[0].clone()));
        // No header: the destination is filter state. The pick is still counted.
        assert!(p.effects.request.is_empty());
        assert_eq!(
            counted(&p.effects),
            [Stat::Of(p.selection.hosts[0], Event::Picks)]
        );
    }

    #[test]
    fn unhealthy_hosts_are_skipped_and_counted() {
        let c = config("");
        let order: Vec<usize> = set(&c).table.walk(stable_hash64(b"bob")).collect();
        let mut healthy = [true; 4];
        healthy[order[0]] = false;
        let p = plan(&c, Some("bob"), &healthy, None);
        assert_eq!(p.selection.hosts, vec![order[1], order[2], order[3]]);
        assert_eq!(
            counted(&p.effects),
            [
                Stat::Of(order[1], Event::Picks),
                Stat::Of(order[0], Event::HealthSkips)
            ]
        );
        assert!(p.explain.unwrap().contains("reason=health_skip;"));
        // Every host ejected: fail open by hash.
        let p = plan(&c, Some("bob"), &[false; 4], None);
        assert_eq!(p.selection.chosen(), Some(order[0]));
        assert_eq!(
            counted(&p.effects),
            [
                Stat::Of(order[0], Event::Picks),
                Stat::Fixed(Metric::AllUnhealthy)
            ]
        );
    }

    #[test]
    fn bounded_load_spills_and_holds_the_chosen_hosts_count() {
        let c = config(r#", "bounded_load": {"factor": 1.0}, "fallbacks": 3"#);
        let order: Vec<usize> = set(&c).table.walk(stable_hash64(b"carol")).collect();
        // 4 in flight on the key's primary, 4 hosts, factor 1: cap = ⌈5 / 4⌉ = 2.
        let mut per_host = [0u64; 4];
        per_host[order[0]] = 4;
        let loads = Loads {
            per_host: &per_host,
            total: 4,
            factor: 1.0,
        };
        let p = plan(&c, Some("carol"), &[true; 4], Some(loads));
        // The spilled host comes last among the fallbacks.
        assert_eq!(
            p.selection.hosts,
            vec![order[1], order[2], order[3], order[0]]
        );
        assert_eq!(p.hold_load, Some(address(&c, order[1])));
        assert_eq!(
            counted(&p.effects),
            [
                Stat::Of(order[1], Event::Picks),
                Stat::Of(order[0], Event::Spills)
            ]
        );
        assert!(p.explain.unwrap().contains("reason=bounded_load_spill;"));
    }

    #[test]
    fn admission_charges_the_planned_host_until_the_bound_spills() {
        use crate::state::{self, Keys, Worker};
        use switchyard_core::shared::{ensure_key, MemStore};
        let c = config(r#", "bounded_load": {"factor": 1.0}"#);
        let s = set(&c);
        let store = MemStore::new();
        let keys = Keys::new("t");
        ensure_key(&store, &keys.loads, state::LOADS_EMPTY).unwrap();
        let worker = Worker::default();
        let k = keying(&c, Some((0, "erin")), 0, 1);
        let order: Vec<usize> = k.order(&s).collect();
        let mut picks = Vec::new();
        for _ in 0..3 {
            let p = state::admit_with(&store, &keys.loads, &worker, 1, &s.hosts, 1.0, |loads| {
                let snap = Snapshot {
                    healthy: &[true; 4],
                    loads: Some(loads),
                    p2c: None,
                    now: 1,
                };
                let p = plan_selection(&c, &s, &k, &snap);
                let chosen = p.selection.chosen();
                (p, chosen)
            })
            .unwrap();
            assert_eq!(
                p.hold_load.as_deref(),
                Some(s.hosts[p.selection.hosts[0]].address.as_str())
            );
            picks.push(p.selection.hosts[0]);
        }
        // Cap ⌈1 × (n + 1) / 4⌉: one request each while fewer than 4 are in flight.
        assert_eq!(picks, vec![order[0], order[1], order[2]]);
    }

    #[test]
    fn keyless_requests_rotate_and_are_counted() {
        let c = config(r#", "fallbacks": 0"#);
        let s = set(&c);
        let picks: Vec<usize> = (0..4)
            .map(|rr| {
                let k = keying(&c, None, rr, 1);
                assert!(k.advances_round_robin());
                let snap = Snapshot {
                    healthy: &[true; 4],
                    loads: None,
                    p2c: None,
                    now: 1,
                };
                let p = plan_selection(&c, &s, &k, &snap);
                assert_eq!(
                    counted(&p.effects),
                    [
                        Stat::Fixed(Metric::NoKey),
                        Stat::Of(rr as usize, Event::Picks)
                    ]
                );
                assert!(p.explain.unwrap().starts_with("key=none; hash=-;"));
                p.selection.hosts[0]
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 3]);
        assert!(!keying(&c, Some((0, "x")), 7, 1).advances_round_robin());
    }

    #[test]
    fn p2c_candidates_are_in_the_debug_text() {
        let c = config(r#", "algorithm": "p2c_ewma""#);
        let s = set(&c);
        let mut ewma = BTreeMap::new();
        // Host 1 is slow: 50 ms; the others have no estimate yet (1 ns).
        ewma.insert(
            address(&c, 1),
            Ewma {
                value_ns: 50e6,
                stamp_ns: 1,
            },
        );
        let in_flight = HashMap::new();
        // Draws 1 and 0 pick host 1 then host 0 (weights 1).
        let snap = Snapshot {
            healthy: &[true; 4],
            loads: None,
            p2c: Some(P2cSnapshot {
                ewma: &ewma,
                in_flight: &in_flight,
                draws: (1, 0),
            }),
            now: 1,
        };
        let k = keying(&c, Some((0, "dave")), 0, 1);
        let p = plan_selection(&c, &s, &k, &snap);
        assert_eq!(p.selection.chosen(), Some(0));
        assert_eq!(p.hold_in_flight, Some(address(&c, 0)));
        assert_eq!(p.hold_load, None);
        let explain = p.explain.unwrap();
        assert!(
            explain.contains(
                "reason=primary; p2c; candidates=10.0.0.2:80=50.000ms,10.0.0.1:80=0.000ms;"
            ),
            "{explain}"
        );
    }

    #[test]
    fn a_later_sets_hosts_count_under_their_own_names() {
        let c = config("");
        let mut subjects = Subjects::default();
        let first = HostSet::new(&c, c.hosts.clone(), 0, &mut subjects);
        assert_eq!(first.subjects, [0, 1, 2, 3]);
        // A fetched set: 10.0.0.2 keeps subject 1, the new host gets the next number.
        let hosts = crate::hostset::parse_host_list(
            br#"[{"address": "10.0.0.2:80"}, {"address": "10.0.0.9:80"}]"#,
        )
        .unwrap();
        let second = HostSet::new(&c, hosts, 1, &mut subjects);
        assert_eq!(second.subjects, [1, 4]);
        assert_eq!(subjects.labels()[4], "host.10_0_0_9_80");
        let mut fx = Effects::new();
        second.count(&mut fx, 0, Event::Ejections);
        // An index outside the set counts nothing.
        second.count(&mut fx, 7, Event::Picks);
        assert_eq!(counted(&fx), [Stat::Of(1, Event::Ejections)]);
    }

    #[test]
    fn no_debug_header_no_response_edit() {
        let c = Config::parse(
            br#"{"hosts": [{"address": "10.0.0.1:80"}], "hash_key": [{"header": "k"}]}"#,
        )
        .unwrap();
        assert!(explain_effects(&c, "key=none").is_empty());
        let p = plan(&c, Some("x"), &[true], None);
        assert_eq!(p.explain, None);
    }
}
