//! proxy-wasm glue: builds the table at configure time, picks a host per request, writes the
//! decision for Envoy, and settles in-flight counts and passive health when the stream ends.

use crate::config::{check_table_limits, Config, Host, HostsFrom, NoKey, Output, P2c};
use crate::hostset::{self, HostSetRecord};
use crate::output::{header_value, set_filter_state_args, ORIGINAL_DST_KEY};
use crate::p2c;
use crate::select::{select, Selection};
use crate::state::{self, HealthChange, Keys};
use crate::table::Table;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use switchyard_core::abi::{self, Map};
use switchyard_core::hash::stable_hash64;
use switchyard_core::host::{self, HostStore};
use switchyard_core::metrics::Metrics;
use switchyard_core::routing::RoutingRecord;
use switchyard_core::shared::{cas_update, ensure_key, CasOutcome, SharedStore, Update};

/// Envoy `response.flags` bits that mean the upstream host failed the request: timeout (UT),
/// remote reset (UR), connection failure (UF), connection termination (UC).
const UPSTREAM_FAILURE_FLAGS: u64 = 0x4 | 0x10 | 0x20 | 0x40;

/// One host set and its table, built once per configuration or host-set change. Requests hold
/// an `Rc` to the set they started with, so a rebuild never changes a request's indices.
pub struct HostSet {
    hosts: Vec<Host>,
    table: Table,
    /// Per-host metric name prefixes (`host.127_0_0_1_8081`).
    host_stats: Vec<String>,
    /// Version of the shared `hosts_from` record this set came from (0: configured hosts).
    version: u64,
}

impl HostSet {
    fn build(config: &Config, hosts: Vec<Host>, version: u64, metrics: &Metrics) -> HostSet {
        let table = Table::for_config(config, &hosts);
        let host_stats: Vec<String> = hosts
            .iter()
            .map(|h| format!("host.{}", stat_label(&h.address)))
            .collect();
        for prefix in &host_stats {
            for stat in ["picks", "spills", "health_skips", "ejections"] {
                metrics.define_counter(&format!("{prefix}.{stat}"));
            }
        }
        metrics.inc("table_rebuilds");
        HostSet {
            hosts,
            table,
            host_stats,
            version,
        }
    }

    fn host_inc(&self, metrics: &Metrics, host: usize, stat: &str) {
        if let Some(prefix) = self.host_stats.get(host) {
            metrics.inc(&format!("{prefix}.{stat}"));
        }
    }

    fn host_index(&self, address: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.address == address)
    }
}

/// Largest `hosts_from` body accepted (1024 hosts need well under 100 KiB).
const MAX_HOST_LIST_BYTES: usize = 1 << 20;

/// Everything one configuration needs at request time, built in `on_configure`.
pub struct Runtime {
    config: Config,
    keys: Keys,
    hostset_key: String,
    metrics: Metrics,
    set: RefCell<Rc<HostSet>>,
    /// This VM's identity in the shared in-flight counts (bounded loads only).
    worker: state::Worker,
    /// `p2c_ewma`: this worker's in-flight requests per host address.
    in_flight: RefCell<HashMap<String, u64>>,
    /// `p2c_ewma`: this worker's random source (xorshift).
    rng: Cell<u64>,
}

impl Runtime {
    fn new(config: Config, scope: &str) -> Runtime {
        let metrics = Metrics::new("hashring");
        for stat in [
            "table_rebuilds",
            "no_key",
            "all_unhealthy",
            "over_capacity",
            "store_errors",
            "output_errors",
            "hosts_from_fetches",
            "hosts_from_not_modified",
            "hosts_from_updates",
            "hosts_from_rejected",
            "hosts_from_errors",
            "other_cluster",
        ] {
            metrics.define_counter(stat);
        }
        let set = HostSet::build(&config, config.hosts.clone(), 0, &metrics);
        Runtime {
            keys: Keys::new(scope),
            hostset_key: format!("switchyard.hashring.{scope}.hostset"),
            set: RefCell::new(Rc::new(set)),
            config,
            metrics,
            worker: state::Worker::default(),
            in_flight: RefCell::new(HashMap::new()),
            rng: Cell::new(1),
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// `p2c_ewma`: the power of two choices over the healthy hosts on the shared latency
    /// estimates and this worker's in-flight counts. Returns the selection and its debug note.
    fn choose_p2c(
        &self,
        set: &HostSet,
        healthy: &[bool],
        key_hash: Option<u64>,
        p: &P2c,
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
        let ewma = match HostStore.get(&self.keys.ewma) {
            Ok((bytes, _)) => p2c::decode(bytes.as_deref()),
            Err(e) => {
                log::warn!("switchyard hashring: latency estimates unavailable: {e:?}");
                self.metrics.inc("store_errors");
                Default::default()
            }
        };
        let in_flight = self.in_flight.borrow();
        let costs: Vec<f64> = set
            .hosts
            .iter()
            .map(|h| {
                p2c::cost(
                    ewma.get(&h.address),
                    in_flight.get(&h.address).copied().unwrap_or(0),
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
        let (r1, r2) = (self.random(), self.random());
        let Some(choice) = p2c::choose(&eligible, &weights, &costs, r1, r2, home, fallbacks) else {
            return (Selection::default(), None);
        };
        let note = choice
            .candidates
            .iter()
            .map(|(h, c)| {
                let addr = set.hosts.get(*h).map_or("-", |x| x.address.as_str());
                format!("{addr}={:.3}ms", c / 1e6)
            })
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

    fn current(&self) -> Rc<HostSet> {
        self.set.borrow().clone()
    }

    /// Adopts the shared host set if its version changed since this worker last looked.
    fn sync_host_set(&self) {
        let record = match HostStore.get(&self.hostset_key) {
            Ok((v, _)) => HostSetRecord::decode(v.as_deref()),
            Err(e) => {
                log::warn!("switchyard hashring: host set unavailable: {e:?}");
                self.metrics.inc("store_errors");
                return;
            }
        };
        if record.version == 0 || record.version == self.current().version {
            return;
        }
        match record.hosts() {
            Some(hosts) => {
                let set = HostSet::build(&self.config, hosts, record.version, &self.metrics);
                log::info!(
                    "switchyard hashring: host set version {} with {} hosts",
                    record.version,
                    set.hosts.len()
                );
                *self.set.borrow_mut() = Rc::new(set);
            }
            None => {
                log::warn!(
                    "switchyard hashring: shared host set is unreadable, keeping the current one"
                );
                self.metrics.inc("store_errors");
            }
        }
    }
}

/// Stat names use `.` as a separator: `127.0.0.1:8081` becomes `127_0_0_1_8081`.
fn stat_label(address: &str) -> String {
    address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}

#[derive(Default)]
pub struct HashringRoot {
    runtime: Option<Rc<Runtime>>,
    /// Round-robin position for requests without a key (per worker).
    round_robin: Rc<Cell<u64>>,
    /// A `hosts_from` fetch of this worker is in flight.
    fetching: bool,
}

impl Context for HashringRoot {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.fetching = false;
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        let status = host::http_call_header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        match status {
            304 => rt.metrics.inc("hosts_from_not_modified"),
            200 if body_size > MAX_HOST_LIST_BYTES => {
                log::warn!("switchyard hashring: hosts_from body of {body_size} bytes exceeds {MAX_HOST_LIST_BYTES}, keeping the last good host set");
                rt.metrics.inc("hosts_from_rejected");
            }
            200 => {
                let body = host::http_call_body(body_size).unwrap_or_default();
                let etag = host::http_call_header("etag").unwrap_or_default();
                self.store_fetched(&rt, &body, &etag);
            }
            other => {
                log::warn!("switchyard hashring: hosts_from answered {other}, keeping the last good host set");
                rt.metrics.inc("hosts_from_errors");
            }
        }
    }
}

impl HashringRoot {
    fn store_fetched(&self, rt: &Runtime, body: &[u8], etag: &str) {
        let checked = hostset::parse_host_list(body).and_then(|hosts| {
            check_table_limits(
                rt.config.algorithm,
                &hosts,
                rt.config.vnodes,
                rt.config.table_size,
            )
            .map_err(|e| e.to_string())
            .map(|_| hosts)
        });
        let hosts = match checked {
            Ok(h) => h,
            Err(e) => {
                log::warn!("switchyard hashring: rejected host set from hosts_from, keeping the last good one: {e}");
                rt.metrics.inc("hosts_from_rejected");
                return;
            }
        };
        let out = cas_update(&HostStore, &rt.hostset_key, state::CAS_RETRIES, |cur| {
            let record = HostSetRecord::decode(cur);
            match hostset::apply_fetched(&record, &hosts, etag) {
                Some(next) => Update::Write(next.encode(), next.version != record.version),
                None => Update::Keep(false),
            }
        });
        match out.result() {
            Some(true) => {
                rt.metrics.inc("hosts_from_updates");
                rt.sync_host_set();
            }
            Some(false) => {}
            None => {
                log::warn!("switchyard hashring: could not store the fetched host set");
                rt.metrics.inc("store_errors");
            }
        }
    }

    /// Claims the fetch lease and, if this worker won it, asks the `hosts_from` endpoint.
    fn maybe_fetch(&mut self, rt: &Runtime, hf: &HostsFrom) {
        if self.fetching {
            return;
        }
        let now = host::now_nanos();
        let out = cas_update(&HostStore, &rt.hostset_key, state::CAS_RETRIES, |cur| {
            let record = HostSetRecord::decode(cur);
            match hostset::claim_fetch(&record, now, hf.interval.as_nanos()) {
                Some(next) => Update::Write(next.encode(), Some(record.etag)),
                None => Update::Keep(None),
            }
        });
        let etag = match out {
            CasOutcome::Written {
                result: Some(etag), ..
            } => etag,
            // Another worker holds the lease or the fetch is not due.
            CasOutcome::Kept { .. } | CasOutcome::Written { .. } | CasOutcome::Exhausted { .. } => {
                return
            }
            CasOutcome::Failed(e) => {
                log::warn!("switchyard hashring: host set lease failed: {e:?}");
                rt.metrics.inc("store_errors");
                return;
            }
        };
        let authority = hf.authority.clone().unwrap_or_else(|| hf.cluster.clone());
        let mut headers = vec![
            (":method", "GET"),
            (":path", hf.path.as_str()),
            (":authority", authority.as_str()),
            ("accept", "application/json"),
        ];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.as_str()));
        }
        match host::dispatch_http_call(&hf.cluster, &headers, &[], hf.timeout.std()) {
            Ok(_) => {
                self.fetching = true;
                rt.metrics.inc("hosts_from_fetches");
            }
            Err(e) => {
                log::warn!(
                    "switchyard hashring: cannot fetch hosts from cluster {}: {e:?}",
                    hf.cluster
                );
                rt.metrics.inc("hosts_from_errors");
            }
        }
    }
}

impl RootContext for HashringRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Not in `main!`: Envoy refuses most host calls while the module initialises.
        host::init_vm("hashring", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = host::plugin_configuration();
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard hashring: invalid configuration: {e}");
                return false;
            }
        };
        // State is shared by every worker (and every listener) running this configuration.
        let scope = format!("{:016x}", stable_hash64(&bytes));
        let mut runtime = Runtime::new(config, &scope);
        if runtime.config.bounded_load.is_some() {
            match state::Worker::claim(&HostStore, &runtime.keys.workers) {
                Ok(w) => runtime.worker = w,
                Err(e) => {
                    log::warn!("switchyard hashring: cannot claim a worker number: {e:?}");
                    runtime.metrics.inc("store_errors");
                }
            }
        }
        // Only the stores this configuration uses are created (shared data cannot be deleted).
        let wanted = [
            (
                runtime.config.bounded_load.is_some(),
                &runtime.keys.loads,
                state::LOADS_EMPTY,
            ),
            (
                runtime.config.health.is_some(),
                &runtime.keys.health,
                state::EMPTY,
            ),
            (
                runtime.config.hosts_from.is_some(),
                &runtime.hostset_key,
                hostset::EMPTY,
            ),
            (runtime.config.p2c.is_some(), &runtime.keys.ewma, p2c::EMPTY),
        ];
        // Each worker draws its own candidates.
        runtime
            .rng
            .set(host::now_nanos() ^ runtime.worker.id.rotate_left(29) | 1);
        for (_, key, initial) in wanted.iter().filter(|w| w.0) {
            if let Err(e) = ensure_key(&HostStore, key, initial) {
                log::warn!("switchyard hashring: cannot create shared data {key}: {e:?}");
                runtime.metrics.inc("store_errors");
            }
        }
        if let Some(hf) = &runtime.config.hosts_from {
            // Adopt a set another worker already fetched, then check for changes regularly.
            runtime.sync_host_set();
            let tick = hf.interval.std().min(std::time::Duration::from_secs(1));
            host::set_tick_period(tick);
        }
        log::info!(
            "switchyard hashring: {} over {} hosts",
            if runtime.config.p2c.is_some() {
                "p2c_ewma"
            } else {
                runtime.config.algorithm.name()
            },
            runtime.current().hosts.len()
        );
        self.runtime = Some(Rc::new(runtime));
        true
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        rt.sync_host_set();
        if let Some(hf) = &rt.config.hosts_from {
            self.maybe_fetch(&rt, hf);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HashringHttp {
            runtime: self.runtime.clone(),
            set: None,
            round_robin: self.round_robin.clone(),
            admitted: None,
            listed: Vec::new(),
            upstream_status: None,
            p2c: None,
            responded_at: None,
            explain: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct HashringHttp {
    runtime: Option<Rc<Runtime>>,
    /// The host set this request was decided on.
    set: Option<Rc<HostSet>>,
    round_robin: Rc<Cell<u64>>,
    /// Host whose in-flight count this request holds (released exactly once in `on_log`).
    admitted: Option<String>,
    /// Hosts written to the header, in order.
    listed: Vec<usize>,
    /// The response status as it reached this filter from the upstream.
    upstream_status: Option<u64>,
    /// `p2c_ewma`: the chosen host (its in-flight count is held) and when the request started.
    p2c: Option<(String, u64)>,
    /// When the response headers arrived (for the latency sample).
    responded_at: Option<u64>,
    explain: Option<String>,
}

impl Context for HashringHttp {}

impl HttpContext for HashringHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(rt) = self.runtime.clone() else {
            return Action::Continue;
        };
        let view = host::request_view();
        if let Some(own) = &rt.config.clusters {
            let record = RoutingRecord::read(&view, &rt.config.cluster_header);
            if !record.cluster.as_ref().is_some_and(|c| own.contains(c)) {
                // Routed to a cluster that is not ours: no host choice, no in-flight charge,
                // no health record. Only a client-sent host choice is removed, so it never
                // reaches a load balancer.
                if let Output::Header(name) = &rt.config.output {
                    host::set_header(Map::RequestHeaders, name, None);
                }
                rt.metrics.inc("other_cluster");
                return Action::Continue;
            }
        }
        let now = host::now_nanos();
        let set = rt.current();
        self.set = Some(set.clone());
        let n = set.hosts.len();

        let healthy = match &rt.config.health {
            None => vec![true; n],
            Some(_) => match state::read_health(&HostStore, &rt.keys.health) {
                Ok(map) => state::healthy_mask(&set.hosts, &map, now),
                Err(e) => {
                    log::warn!("switchyard hashring: health state unavailable: {e:?}");
                    rt.metrics.inc("store_errors");
                    vec![true; n]
                }
            },
        };

        let key = rt.config.hash_key.first_present(&view);
        let (label, key_hash) = match &key {
            Some((i, value)) => (
                rt.config
                    .hash_key
                    .0
                    .get(*i)
                    .map(|s| s.label())
                    .unwrap_or_default(),
                Some(stable_hash64(value.as_bytes())),
            ),
            None => {
                rt.metrics.inc("no_key");
                ("none".to_string(), None)
            }
        };
        let start = match (key_hash, rt.config.no_key) {
            (Some(_), _) => 0,
            (None, NoKey::RoundRobin) => {
                let c = self.round_robin.get();
                self.round_robin.set(c.wrapping_add(1));
                c
            }
            (None, NoKey::Random) => {
                let c = self.round_robin.get();
                self.round_robin.set(c.wrapping_add(1));
                stable_hash64(&[now.to_le_bytes(), c.to_le_bytes()].concat())
            }
        };
        // Without a key the order is a rotation of the host list, so health skips and the
        // load bound still apply.
        let order = || -> Box<dyn Iterator<Item = usize> + '_> {
            match key_hash {
                Some(k) => Box::new(set.table.walk(k)),
                None => {
                    let first = (start % n.max(1) as u64) as usize;
                    Box::new((0..n).map(move |j| (first + j) % n))
                }
            }
        };
        let fallbacks = match rt.config.output {
            Output::Header(_) => rt.config.fallbacks as usize,
            Output::OriginalDst => 0,
        };

        let mut p2c_note = None;
        let selection: Selection = match (&rt.config.p2c, rt.config.bounded_load) {
            (Some(p), _) => {
                let (sel, note) = rt.choose_p2c(&set, &healthy, key_hash, p, fallbacks, now);
                self.p2c = sel
                    .chosen()
                    .and_then(|c| set.hosts.get(c))
                    .map(|h| (h.address.clone(), now));
                if let Some((address, _)) = &self.p2c {
                    *rt.in_flight
                        .borrow_mut()
                        .entry(address.clone())
                        .or_insert(0) += 1;
                }
                p2c_note = note;
                sel
            }
            (None, None) => select(order(), &healthy, None, fallbacks),
            (None, Some(factor)) => {
                match state::admit(
                    &HostStore,
                    &rt.keys.loads,
                    &rt.worker,
                    now / 1_000_000,
                    &set.hosts,
                    order,
                    &healthy,
                    factor,
                    fallbacks,
                ) {
                    Ok(sel) => {
                        self.admitted = sel
                            .chosen()
                            .and_then(|c| set.hosts.get(c))
                            .map(|h| h.address.clone());
                        sel
                    }
                    Err(e) => {
                        // Fail open: pick without the bound rather than fail the request.
                        log::warn!("switchyard hashring: in-flight counts unavailable: {e:?}");
                        rt.metrics.inc("store_errors");
                        select(order(), &healthy, None, fallbacks)
                    }
                }
            }
        };

        record_metrics(&rt.metrics, &set, &selection);
        let addresses: Vec<&str> = selection
            .hosts
            .iter()
            .filter_map(|i| set.hosts.get(*i))
            .map(|h| h.address.as_str())
            .collect();
        match &rt.config.output {
            // Always overwritten: a client-sent value must never reach the load balancer.
            Output::Header(name) => host::set_header(
                Map::RequestHeaders,
                name,
                Some(header_value(&addresses).as_bytes()),
            ),
            Output::OriginalDst => {
                if let Some(chosen) = addresses.first() {
                    let args = set_filter_state_args(ORIGINAL_DST_KEY, chosen);
                    if let Err(e) = abi::call_foreign_function("set_envoy_filter_state", &args) {
                        log::warn!("switchyard hashring: set_envoy_filter_state failed: {e:?}");
                        rt.metrics.inc("output_errors");
                    }
                }
            }
        }
        if rt.config.debug_header.is_some() {
            let hash = key_hash.map_or("-".to_string(), |h| format!("{h:016x}"));
            let chosen = addresses.first().copied().unwrap_or("-");
            let mut reason = if key_hash.is_none() {
                format!("no_key,{}", selection.reason())
            } else {
                selection.reason()
            };
            if let Some(note) = &p2c_note {
                reason = format!("{reason}; {note}");
            }
            self.explain = Some(format!(
                "key={label}; hash={hash}; host={chosen}; reason={reason}; order={}",
                header_value(&addresses)
            ));
        }
        self.listed = selection.hosts;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The status as the upstream sent it: later in the response path the cache may replace
        // a 5xx with a stored response (stale-if-error), and `response.code` in `on_log` would
        // then hide the host's failure.
        if self.set.is_some() && self.upstream_status.is_none() {
            self.upstream_status = host::header(Map::ResponseHeaders, ":status")
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok());
            if self.p2c.is_some() {
                self.responded_at = Some(host::now_nanos());
            }
        }
        if let (Some(rt), Some(explain)) = (&self.runtime, &self.explain) {
            if let Some(name) = &rt.config.debug_header {
                host::set_header(Map::ResponseHeaders, name, Some(explain.as_bytes()));
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(rt) = self.runtime.clone() else {
            return;
        };
        if let Some(address) = self.admitted.take() {
            let now_ms = host::now_nanos() / 1_000_000;
            if let Err(e) = state::release(&HostStore, &rt.keys.loads, &rt.worker, now_ms, &address)
            {
                // Kept by the worker and written with its next admission or release.
                log::warn!("switchyard hashring: in-flight release deferred: {e:?}");
                rt.metrics.inc("store_errors");
            }
        }
        if rt.config.health.is_some() {
            self.observe_health(&rt);
        }
        if let (Some((address, started)), Some(p)) = (self.p2c.take(), &rt.config.p2c) {
            self.observe_latency(&rt, p, &address, started);
        }
    }
}

fn record_metrics(metrics: &Metrics, set: &HostSet, sel: &Selection) {
    if let Some(c) = sel.chosen() {
        set.host_inc(metrics, c, "picks");
    }
    for h in &sel.spilled {
        set.host_inc(metrics, *h, "spills");
    }
    for h in &sel.health_skipped {
        set.host_inc(metrics, *h, "health_skips");
    }
    if sel.all_unhealthy {
        metrics.inc("all_unhealthy");
    }
    if sel.over_capacity {
        metrics.inc("over_capacity");
    }
}

impl HashringHttp {
    /// `p2c_ewma`: releases this worker's in-flight count and folds the request's latency (or
    /// the failure penalty) into the shared estimate of the host that served it.
    fn observe_latency(&self, rt: &Runtime, p: &P2c, chosen: &str, started: u64) {
        if let Some(n) = rt.in_flight.borrow_mut().get_mut(chosen) {
            *n = n.saturating_sub(1);
        }
        let Some(served) = host::property_text(&["upstream", "address"]).filter(|s| !s.is_empty())
        else {
            return; // never reached an upstream
        };
        let now = host::now_nanos();
        let code = self
            .upstream_status
            .or_else(|| host::property_u64(&["response", "code"]))
            .unwrap_or(0);
        let flags = host::property_u64(&["response", "flags"]).unwrap_or(0);
        let overloaded = (code == 429 || code == 503)
            && host::header(Map::ResponseHeaders, "retry-after").is_some();
        let failed = code >= 500 || flags & UPSTREAM_FAILURE_FLAGS != 0 || overloaded;
        let sample = if failed {
            p.failure_penalty_ns
        } else {
            match self.responded_at {
                Some(t) => t.saturating_sub(started).max(1),
                None => return, // no response and no failure: nothing learned
            }
        };
        let out = cas_update(&HostStore, &rt.keys.ewma, state::CAS_RETRIES, |cur| {
            let mut map = p2c::decode(cur);
            let e = map.get(&served).copied().unwrap_or_default();
            map.insert(served.clone(), e.observe(sample, now, p.decay_ns));
            // Bounded: only hosts of the current set keep an estimate.
            if let Some(set) = &self.set {
                map.retain(|addr, _| set.host_index(addr).is_some());
            }
            Update::Write(p2c::encode(&map), ())
        });
        if out.result().is_none() {
            rt.metrics.inc("store_errors");
        }
    }

    /// Attributes the stream's outcome to the host that served it (`upstream.address`). With
    /// the header output, retries walk the listed hosts in order, so hosts listed before the
    /// one that finally served were tried and failed.
    fn observe_health(&self, rt: &Runtime) {
        let (Some(health), Some(set)) = (&rt.config.health, &self.set) else {
            return;
        };
        let served = host::property_text(&["upstream", "address"]).filter(|s| !s.is_empty());
        let Some(served) = served else {
            // Never reached an upstream (local reply before routing): nothing to attribute.
            return;
        };
        let code = self
            .upstream_status
            .or_else(|| host::property_u64(&["response", "code"]))
            .unwrap_or(0);
        let flags = host::property_u64(&["response", "flags"]).unwrap_or(0);
        let failed = code >= 500 || flags & UPSTREAM_FAILURE_FLAGS != 0;
        if code == 0 && !failed {
            // No response and no upstream fault (e.g. the client went away): unknown.
            return;
        }
        let now = host::now_nanos();
        let cooldown = health.cooldown.as_nanos();
        let served_index = set.host_index(&served);
        let attempts = host::property_u64(&["upstream", "request_attempt_count"]).unwrap_or(1);
        let outcomes = tried_hosts(&self.listed, served_index, attempts, failed);
        for (h, failed) in outcomes {
            let Some(address) = set.hosts.get(h).map(|x| x.address.as_str()) else {
                continue;
            };
            match state::record_outcome(
                &HostStore,
                &rt.keys.health,
                address,
                failed,
                now,
                health.failures,
                cooldown,
            ) {
                Ok(HealthChange::Ejected) => {
                    log::info!(
                        "switchyard hashring: {address} ejected for {} after {} consecutive failures",
                        health.cooldown,
                        health.failures
                    );
                    set.host_inc(&rt.metrics, h, "ejections");
                }
                Ok(HealthChange::None) => {}
                Err(e) => {
                    log::warn!("switchyard hashring: health update failed: {e:?}");
                    rt.metrics.inc("store_errors");
                }
            }
        }
    }
}

/// The hosts a finished request actually tried, with whether each failed. Envoy's
/// `override_host` walks the listed hosts in order, one per attempt, so when the served host is
/// the `attempts`-th listed one, the hosts before it were tried and failed. Otherwise (a host
/// Envoy skipped without trying, a request that went elsewhere) only the served host is known.
fn tried_hosts(
    listed: &[usize],
    served: Option<usize>,
    attempts: u64,
    failed: bool,
) -> Vec<(usize, bool)> {
    let Some(served) = served else {
        return Vec::new();
    };
    let attempts = usize::try_from(attempts).unwrap_or(usize::MAX);
    match attempts.checked_sub(1) {
        Some(pos) if pos > 0 && listed.get(pos) == Some(&served) => listed[..pos]
            .iter()
            .map(|h| (*h, true))
            .chain([(served, failed)])
            .collect(),
        _ => vec![(served, failed)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_actually_tried_are_attributed() {
        // Third attempt served by the third listed host: the first two failed.
        assert_eq!(
            tried_hosts(&[4, 7, 2], Some(2), 3, false),
            vec![(4, true), (7, true), (2, false)]
        );
        // One attempt, served by a later listed host (Envoy skipped the first without trying
        // it): only the served host is known.
        assert_eq!(tried_hosts(&[4, 7, 2], Some(7), 1, true), vec![(7, true)]);
        // Served by a host that is not in the list (another cluster sharing hosts).
        assert_eq!(tried_hosts(&[4, 7], Some(9), 2, false), vec![(9, false)]);
        assert!(tried_hosts(&[4, 7], None, 1, true).is_empty());
    }

    #[test]
    fn stat_labels_have_no_separators() {
        assert_eq!(stat_label("127.0.0.1:8081"), "127_0_0_1_8081");
        assert_eq!(stat_label("[::1]:80"), "1__80");
    }
}
