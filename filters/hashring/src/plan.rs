//! The request side as pure functions: whether a request is this filter's at all
//! ([`verdict`]), which key and start position it gets ([`keying`]), and, from the health / load /
//! latency snapshot, the whole [`SelectionPlan`] ([`plan_selection`]): the ordered host list
//! with fallbacks, what to write for Envoy, the debug header text, the counters and the
//! in-flight bookkeeping. No host calls: the glue (`filter`) reads the facts, asks here and
//! applies the plan in one place.
//!
//! Times are nanoseconds of the host clock (`host::now_nanos()`), passed in.

use crate::config::{Config, Host, NoKey, Output, P2c};
use crate::output::header_value;
use crate::p2c::{self, Ewma};
use crate::select::{select, Loads, Selection};
use crate::table::Table;
use std::collections::{BTreeMap, HashMap};
use switchyard_core::hash::stable_hash64;

/// Per-host counters, defined for every host of every set.
pub const HOST_STATS: [&str; 4] = ["picks", "spills", "health_skips", "ejections"];

/// One host set and its table, built once per configuration or host-set change. Requests hold
/// an `Rc` to the set they started with, so a rebuild never changes a request's indices.
pub struct HostSet {
    pub hosts: Vec<Host>,
    pub table: Table,
    /// Per-host metric name prefixes (`host.127_0_0_1_8081`).
    pub host_stats: Vec<String>,
    /// Version of the shared `hosts_from` record this set came from (0: configured hosts).
    pub version: u64,
}

impl HostSet {
    pub fn new(config: &Config, hosts: Vec<Host>, version: u64) -> HostSet {
        let table = Table::for_config(config, &hosts);
        let host_stats = hosts
            .iter()
            .map(|h| format!("host.{}", stat_label(&h.address)))
            .collect();
        HostSet {
            hosts,
            table,
            host_stats,
            version,
        }
    }

    /// Every per-host counter name of the set (`host.<h>.picks`, ...).
    pub fn stat_names(&self) -> impl Iterator<Item = String> + '_ {
        self.host_stats
            .iter()
            .flat_map(|p| HOST_STATS.iter().map(move |s| format!("{p}.{s}")))
    }

    /// The full name of a counter of this set.
    pub fn metric_name(&self, metric: Metric) -> Option<String> {
        match metric {
            Metric::Global(name) => Some(name.to_string()),
            Metric::Host(h, stat) => self.host_stats.get(h).map(|p| format!("{p}.{stat}")),
        }
    }

    pub fn host_index(&self, address: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.address == address)
    }

    fn address(&self, h: usize) -> Option<&str> {
        self.hosts.get(h).map(|x| x.address.as_str())
    }
}

/// Stat names use `.` as a separator: `127.0.0.1:8081` becomes `127_0_0_1_8081`.
pub fn stat_label(address: &str) -> String {
    address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}

/// A counter to increment: filter-wide, or a host's (by index in the request's set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Global(&'static str),
    Host(usize, &'static str),
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
    pub fn metrics(&self) -> &'static [Metric] {
        match self {
            Verdict::OtherCluster { .. } => &[Metric::Global("other_cluster")],
            Verdict::Act => &[],
        }
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

/// Where the decision goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputWrite {
    /// Always written (also empty): a client-sent value never reaches the load balancer.
    Header { name: String, value: String },
    /// `set_envoy_filter_state` with the chosen host, if any.
    OriginalDst(Option<String>),
}

/// Everything one request's host choice does.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionPlan {
    pub selection: Selection,
    /// The listed hosts' addresses: chosen first, then fallbacks.
    pub addresses: Vec<String>,
    pub output: OutputWrite,
    /// The debug header's value (with `debug_header` only).
    pub explain: Option<String>,
    pub metrics: Vec<Metric>,
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
    let output = match &config.output {
        Output::Header(name) => OutputWrite::Header {
            name: name.clone(),
            value: header_value(&refs),
        },
        Output::OriginalDst => OutputWrite::OriginalDst(addresses.first().cloned()),
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
        metrics: selection_metrics(keying, &selection),
        hold_load: chosen.clone().filter(|_| snap.loads.is_some() && !is_p2c),
        hold_in_flight: chosen.filter(|_| is_p2c),
        selection,
        addresses,
        output,
        explain,
    }
}

fn selection_metrics(keying: &Keying, sel: &Selection) -> Vec<Metric> {
    let mut out = Vec::new();
    if keying.hash.is_none() {
        out.push(Metric::Global("no_key"));
    }
    if let Some(c) = sel.chosen() {
        out.push(Metric::Host(c, "picks"));
    }
    out.extend(sel.spilled.iter().map(|h| Metric::Host(*h, "spills")));
    out.extend(
        sel.health_skipped
            .iter()
            .map(|h| Metric::Host(*h, "health_skips")),
    );
    if sel.all_unhealthy {
        out.push(Metric::Global("all_unhealthy"));
    }
    if sel.over_capacity {
        out.push(Metric::Global("over_capacity"));
    }
    out
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

    fn config(extra: &str) -> Config {
        let json = format!(
            r#"{{"hosts": [{{"address": "10.0.0.1:80"}}, {{"address": "10.0.0.2:80"}},
                {{"address": "10.0.0.3:80"}}, {{"address": "10.0.0.4:80"}}],
               "hash_key": [{{"header": "x-user-id"}}], "debug_header": "x-hash-explain"{extra}}}"#
        );
        Config::parse(json.as_bytes()).unwrap()
    }

    fn set(c: &Config) -> HostSet {
        HostSet::new(c, c.hosts.clone(), 0)
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
            assert_eq!(v.metrics(), &[Metric::Global("other_cluster")]);
        }
        let dst = config(r#", "clusters": ["web"], "output": {"original_dst": true}"#);
        assert_eq!(
            verdict(&dst, Some("api")),
            Verdict::OtherCluster {
                remove_header: None
            }
        );
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
        assert_eq!(
            p.output,
            OutputWrite::Header {
                name: "x-upstream-host".into(),
                value: want.join(",")
            }
        );
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
        assert_eq!(p.metrics, vec![Metric::Host(order[0], "picks")]);
        assert_eq!((p.hold_load, p.hold_in_flight), (None, None));
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
        assert_eq!(
            p.output,
            OutputWrite::OriginalDst(Some(p.addresses[0].clone()))
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
            p.metrics,
            vec![
                Metric::Host(order[1], "picks"),
                Metric::Host(order[0], "health_skips")
            ]
        );
        assert!(p.explain.unwrap().contains("reason=health_skip;"));
        // Every host ejected: fail open by hash.
        let p = plan(&c, Some("bob"), &[false; 4], None);
        assert_eq!(p.selection.chosen(), Some(order[0]));
        assert!(p.metrics.contains(&Metric::Global("all_unhealthy")));
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
        assert!(p.metrics.contains(&Metric::Host(order[0], "spills")));
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
                assert_eq!(p.metrics[0], Metric::Global("no_key"));
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
    fn stat_labels_have_no_separators() {
        assert_eq!(stat_label("127.0.0.1:8081"), "127_0_0_1_8081");
        assert_eq!(stat_label("[::1]:80"), "1__80");
        let c = config("");
        let s = set(&c);
        assert_eq!(
            s.metric_name(Metric::Host(1, "picks")).as_deref(),
            Some("host.10_0_0_2_80.picks")
        );
        assert_eq!(s.stat_names().count(), 16);
    }
}
