//! Thin proxy-wasm glue: build the request view, ask the table, apply the decision.

use crate::config::{parse_router_config, RouterConfig};
use crate::reload::{self, FetchResult, Keys};
use crate::table::{HeaderOps, Matched, MirrorPlan, Outcome, Table, NOT_FOUND_BODY};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration as StdDuration;
use switchyard_core::abi::{self, Buffer, Map};
use switchyard_core::host::{self, HostStore};
use switchyard_core::metrics::Metrics;
use switchyard_core::rng::XorShift;
use switchyard_core::routing::ROUTE_HEADER;

pub const EXPLAIN_HEADER: &str = "x-switchyard-route";
pub const VERSION_HEADER: &str = "x-switchyard-table-version";
/// Longest explain header value: a large `match` must not produce a huge response header.
const MAX_EXPLAIN: usize = 1024;
/// Longest tick: bounds how late a worker notices a due fetch.
const MAX_TICK: StdDuration = StdDuration::from_secs(1);
/// Hop-by-hop and framing headers that must not be copied into a mirrored request.
const MIRROR_SKIP: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// The table in force on this worker.
struct Live {
    table: Rc<Table>,
    version: u64,
    /// The last shared version looked at (parsed or not), so each version is parsed once.
    seen: u64,
}

/// State of one plugin instance on one worker, shared by its root and HTTP contexts.
struct Plugin {
    config: RouterConfig,
    keys: Option<Keys>,
    live: RefCell<Live>,
    metrics: Metrics,
    root_context_id: u32,
    rng: Cell<XorShift>,
}

impl Plugin {
    /// Picks up a newer table published by any worker (one 8-byte shared-data read).
    fn refresh(&self) {
        let Some(keys) = &self.keys else { return };
        let Some(v) = reload::read_version(&HostStore, keys) else {
            return;
        };
        if v == self.live.borrow().seen {
            return;
        }
        self.live.borrow_mut().seen = v;
        let Some((version, body)) = reload::read_table(&HostStore, keys) else {
            return;
        };
        match crate::config::parse_table(
            &body,
            self.config.known_clusters.as_deref(),
            &self.config.cluster_header,
        ) {
            Ok(table) => {
                let mut live = self.live.borrow_mut();
                live.table = Rc::new(table);
                live.version = version;
                self.metrics.set_gauge("table_version", version);
            }
            Err(e) => log::error!(
                "switchyard router: shared table version {version} is invalid for this configuration, keeping version {}: {e}",
                self.live.borrow().version
            ),
        }
    }

    fn random(&self) -> u64 {
        XorShift::next_in(&self.rng)
    }
}

pub struct RouterRoot {
    context_id: u32,
    plugin: Option<Rc<Plugin>>,
    fetch_token: Option<u32>,
    /// The last fetch failure logged, so an endpoint that stays down logs once, not per interval.
    last_failure: Option<String>,
}

impl RouterRoot {
    pub fn new(context_id: u32) -> Self {
        RouterRoot {
            context_id,
            plugin: None,
            fetch_token: None,
            last_failure: None,
        }
    }

    fn start_fetch(&mut self, plugin: &Plugin) {
        let (Some(spec), Some(keys)) = (&plugin.config.reload, &plugin.keys) else {
            return;
        };
        if self.fetch_token.is_some() {
            return;
        }
        let now = host::now_nanos();
        let hold = spec
            .interval
            .as_nanos()
            .saturating_add(spec.timeout.as_nanos());
        let Some(etag) = reload::claim_fetch(&HostStore, keys, now, hold) else {
            return;
        };
        let authority = spec.authority.as_deref().unwrap_or(&spec.cluster);
        let mut headers = vec![
            (":method", "GET"),
            (":path", spec.path.as_str()),
            (":authority", authority),
            ("accept", "application/json"),
        ];
        if !etag.is_empty() {
            headers.push(("if-none-match", etag.as_str()));
        }
        match host::dispatch_http_call(&spec.cluster, &headers, &[], spec.timeout.std()) {
            Ok(token) => self.fetch_token = Some(token),
            Err(e) => {
                // Release the lease: the next attempt is one interval away, not interval + timeout.
                reload::finish_fetch(&HostStore, keys, now, spec.interval.as_nanos(), None);
                plugin.metrics.inc("reloads_failed");
                log::warn!(
                    "switchyard router: cannot fetch the route table from cluster {:?}: {e:?}",
                    spec.cluster
                );
            }
        }
    }

    fn finish_fetch(&mut self, plugin: &Plugin, body_size: usize) {
        let (Some(spec), Some(keys)) = (&plugin.config.reload, &plugin.keys) else {
            return;
        };
        let headers = host::http_call_headers();
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n.as_bytes()))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let status = header(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let result = reload::evaluate_fetch(
            status,
            header("etag"),
            body_size,
            || host::http_call_body(body_size).unwrap_or_default(),
            spec.max_bytes,
            plugin.config.known_clusters.as_deref(),
            &plugin.config.cluster_header,
        );
        let served_etag = match &result {
            FetchResult::Accepted { etag, .. } | FetchResult::Rejected { etag, .. } => {
                Some(etag.as_str())
            }
            _ => None,
        };
        reload::finish_fetch(
            &HostStore,
            keys,
            host::now_nanos(),
            spec.interval.as_nanos(),
            served_etag,
        );
        match result {
            FetchResult::NotModified => {
                self.last_failure = None;
                plugin.metrics.inc("reloads_not_modified");
            }
            FetchResult::Failed(why) => {
                plugin.metrics.inc("reloads_failed");
                if self.last_failure.as_deref() == Some(why.as_str()) {
                    return;
                }
                self.last_failure = Some(why.clone());
                log::warn!(
                    "switchyard router: fetching the route table from {}{} failed: {why}; keeping version {}",
                    spec.cluster,
                    spec.path,
                    plugin.live.borrow().version
                );
            }
            FetchResult::Rejected { error, .. } => {
                self.last_failure = None;
                plugin.metrics.inc("reloads_rejected");
                log::error!(
                    "switchyard router: rejected reloaded route table from {}{}: {error}; keeping version {}",
                    spec.cluster,
                    spec.path,
                    plugin.live.borrow().version
                );
            }
            FetchResult::Accepted { table, body, .. } => {
                self.last_failure = None;
                match reload::publish(&HostStore, keys, &body) {
                    Ok(version) => {
                        let changed = version != plugin.live.borrow().version;
                        if changed {
                            let mut live = plugin.live.borrow_mut();
                            live.table = Rc::new(*table);
                            live.version = version;
                            live.seen = live.seen.max(version);
                            plugin.metrics.inc("reloads_ok");
                            plugin.metrics.set_gauge("table_version", version);
                            log::info!(
                                "switchyard router: route table version {version} in force ({} routes)",
                                live.table.routes().len()
                            );
                        } else {
                            plugin.metrics.inc("reloads_not_modified");
                        }
                    }
                    Err(e) => {
                        plugin.metrics.inc("reloads_failed");
                        log::error!(
                            "switchyard router: cannot publish the reloaded route table: {e:?}"
                        );
                    }
                }
            }
        }
    }
}

impl Context for RouterRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.fetch_token != Some(token_id) {
            return;
        }
        self.fetch_token = None;
        if let Some(plugin) = self.plugin.clone() {
            self.finish_fetch(&plugin, body_size);
        }
    }
}

impl RootContext for RouterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        host::init_vm("router", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = host::plugin_configuration();
        let config = match parse_router_config(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("switchyard router: invalid configuration: {e}");
                return false;
            }
        };
        let metrics = Metrics::new("router");
        for name in [
            "reloads_ok",
            "reloads_rejected",
            "reloads_not_modified",
            "reloads_failed",
            "no_route",
            "mirror_skipped",
            "mirror_failed",
        ] {
            metrics.define_counter(name);
        }
        metrics.define_gauge("table_version");
        let keys = config.reload.as_ref().map(|r| {
            let root_id = host::property_text(&["plugin_root_id"]).unwrap_or_default();
            Keys::new(&root_id, &r.cluster, &r.path)
        });
        if let Some(k) = &keys {
            if let Err(e) = k.ensure(&HostStore) {
                // Reload then cannot coordinate; the configured table still routes.
                log::error!("switchyard router: shared data unavailable, reload disabled: {e:?}");
            }
        }
        let tick = config
            .reload
            .as_ref()
            .map(|r| r.interval.std().min(MAX_TICK));
        let seed = host::now_nanos() ^ (u64::from(self.context_id) << 32);
        let plugin = Plugin {
            live: RefCell::new(Live {
                table: Rc::new(config.table.clone()),
                version: 0,
                seen: 0,
            }),
            config,
            keys,
            metrics,
            root_context_id: self.context_id,
            rng: Cell::new(XorShift::new(seed)),
        };
        // A table another worker (or an earlier plugin configuration) published stays in force.
        plugin.refresh();
        plugin
            .metrics
            .set_gauge("table_version", plugin.live.borrow().version);
        let plugin = Rc::new(plugin);
        self.plugin = Some(plugin.clone());
        if let Some(t) = tick {
            // The first fetch waits for the first tick: during configuration Envoy's cluster
            // manager may not be ready, and a call dispatched then can stay unanswered.
            host::set_tick_period(t);
        }
        log::info!(
            "switchyard router: configured with {} routes",
            plugin.live.borrow().table.routes().len()
        );
        true
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = self.plugin.clone() {
            plugin.refresh();
            self.start_fetch(&plugin);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(RouterHttp {
            context_id,
            plugin,
            table: None,
            matched: Matched::Nothing,
            forwarded: false,
            explain: None,
            mirror: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A mirror copy waiting for the request body.
struct PendingMirror {
    plan: MirrorPlan,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

struct RouterHttp {
    context_id: u32,
    plugin: Rc<Plugin>,
    /// The table this request was decided with (kept for the response phase across reloads).
    table: Option<(Rc<Table>, u64)>,
    matched: Matched,
    forwarded: bool,
    explain: Option<String>,
    mirror: Option<PendingMirror>,
}

fn apply_request_ops(ops: &HeaderOps) {
    apply_ops(Map::RequestHeaders, ops);
}

fn apply_ops(map: Map, ops: &HeaderOps) {
    for name in &ops.remove {
        host::set_header(map, name, None);
    }
    for (name, value) in &ops.set {
        host::set_header(map, name, Some(value.as_bytes()));
    }
    for (name, value) in &ops.append {
        host::add_header(map, name, value.as_bytes());
    }
}

/// Response headers as a list for a local reply: remove, then set, then append.
fn local_headers(base: &mut Vec<(String, String)>, ops: &HeaderOps) {
    base.retain(|(k, _)| !ops.remove.contains(k));
    for (name, value) in &ops.set {
        base.retain(|(k, _)| k != name);
        base.push((name.clone(), value.clone()));
    }
    base.extend(ops.append.iter().cloned());
}

impl RouterHttp {
    fn debug_headers(&self, out: &mut Vec<(String, String)>, version: u64) {
        if self.plugin.config.explain {
            if let Some(e) = &self.explain {
                out.push((EXPLAIN_HEADER.to_string(), e.clone()));
            }
        }
        if self.plugin.config.version_header {
            out.push((VERSION_HEADER.to_string(), version.to_string()));
        }
    }

    fn count(&self, table: &Table, what: &str) {
        let name = format!("route.{}.{what}", table.name(self.matched));
        self.plugin.metrics.inc(&name);
    }

    fn send_mirror(&self, m: PendingMirror) {
        let headers: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        // Dispatched as the root context: Envoy cancels a stream context's calls when the
        // request ends, and a mirror must outlive a fast original.
        host::set_effective_context(self.plugin.root_context_id);
        let sent = host::dispatch_http_call_bytes(
            &m.plan.cluster,
            &headers,
            &m.body,
            m.plan.timeout.std(),
        );
        host::set_effective_context(self.context_id);
        match sent {
            Ok(_) => {
                if let Some((table, _)) = &self.table {
                    self.count(table, "mirrored");
                }
            }
            Err(e) => {
                self.plugin.metrics.inc("mirror_failed");
                log::warn!(
                    "switchyard router: mirror to cluster {:?} failed: {e:?}",
                    m.plan.cluster
                );
            }
        }
    }

    fn prepare_mirror(&self, plan: MirrorPlan) -> PendingMirror {
        let mut headers = Vec::new();
        for (k, mut v) in host::headers(Map::RequestHeaders) {
            let k = String::from_utf8_lossy(&k).into_owned();
            if MIRROR_SKIP.contains(&k.as_str())
                || k == self.plugin.config.cluster_header
                || k == ROUTE_HEADER
            {
                continue;
            }
            // Envoy's convention: the shadow sees the host suffixed with "-shadow".
            if k == ":authority" {
                v.extend_from_slice(b"-shadow");
            }
            headers.push((k, v));
        }
        PendingMirror {
            plan,
            headers,
            body: Vec::new(),
        }
    }
}

impl Context for RouterHttp {}

impl HttpContext for RouterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.plugin.refresh();
        let (table, version) = {
            let live = self.plugin.live.borrow();
            (live.table.clone(), live.version)
        };
        let req = host::request_view();
        let plugin = self.plugin.clone();
        let mut rng = || plugin.random();
        let decision = table.decide(&req, &mut rng, self.plugin.config.explain);
        self.matched = decision.matched;
        self.explain = decision
            .explain
            .map(|e| truncate(format!("v{version} {e}"), MAX_EXPLAIN));
        self.table = Some((table.clone(), version));
        let cluster_header = self.plugin.config.cluster_header.as_str();
        if decision.matched != Matched::Nothing {
            self.count(&table, "matches");
        }
        let response_ops = table
            .action(decision.matched)
            .map(|a| a.response_headers.clone())
            .unwrap_or_default();
        match decision.outcome {
            Outcome::Forward {
                cluster,
                path,
                authority,
                mirror,
            } => {
                // The routing record (`switchyard_core::routing`), always overwritten so
                // clients can neither pick a cluster nor forge what later filters read.
                host::set_header(
                    Map::RequestHeaders,
                    cluster_header,
                    Some(cluster.as_bytes()),
                );
                host::set_header(
                    Map::RequestHeaders,
                    ROUTE_HEADER,
                    Some(table.name(decision.matched).as_bytes()),
                );
                if let Some(p) = &path {
                    host::set_header(Map::RequestHeaders, ":path", Some(p.as_bytes()));
                }
                if let Some(a) = &authority {
                    host::set_header(Map::RequestHeaders, ":authority", Some(a.as_bytes()));
                }
                if let Some(a) = table.action(decision.matched) {
                    apply_request_ops(&a.request_headers);
                }
                self.forwarded = true;
                self.count(&table, "routed");
                if let Some(plan) = mirror {
                    let pending = self.prepare_mirror(plan);
                    if end_of_stream {
                        self.send_mirror(pending);
                    } else {
                        self.mirror = Some(pending);
                    }
                }
                Action::Continue
            }
            Outcome::Redirect { status, location } => {
                clear_record(cluster_header);
                let mut headers = vec![("location".to_string(), location)];
                local_headers(&mut headers, &response_ops);
                self.debug_headers(&mut headers, version);
                self.count(&table, "redirected");
                send_local(u32::from(status), &headers, &[])
            }
            Outcome::Respond {
                status,
                body,
                headers: mut h,
            } => {
                clear_record(cluster_header);
                local_headers(&mut h, &response_ops);
                self.debug_headers(&mut h, version);
                self.count(&table, "responded");
                send_local(u32::from(status), &h, body.as_bytes())
            }
            Outcome::NotFound => {
                clear_record(cluster_header);
                self.plugin.metrics.inc("no_route");
                let mut h = vec![("content-type".to_string(), "text/plain".to_string())];
                self.debug_headers(&mut h, version);
                send_local(404, &h, NOT_FOUND_BODY.as_bytes())
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(mut m) = self.mirror.take() {
            // The original streams on untouched; the copy keeps what it has seen so far.
            let chunk = abi::buffer(Buffer::RequestBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            if m.body.len() + chunk.len() > m.plan.max_body_bytes {
                self.plugin.metrics.inc("mirror_skipped");
                return Action::Continue;
            }
            m.body.extend_from_slice(&chunk);
            if end_of_stream {
                self.send_mirror(m);
            } else {
                self.mirror = Some(m);
            }
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(m) = self.mirror.take() {
            self.send_mirror(m);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.forwarded {
            return Action::Continue;
        }
        let Some((table, version)) = self.table.clone() else {
            return Action::Continue;
        };
        if let Some(a) = table.action(self.matched) {
            apply_ops(Map::ResponseHeaders, &a.response_headers);
        }
        let mut extra = Vec::new();
        self.debug_headers(&mut extra, version);
        for (k, v) in extra {
            host::set_header(Map::ResponseHeaders, &k, Some(v.as_bytes()));
        }
        Action::Continue
    }
}

/// Removes the routing record from a request the router answers itself.
fn clear_record(cluster_header: &str) {
    host::set_header(Map::RequestHeaders, cluster_header, None);
    host::set_header(Map::RequestHeaders, ROUTE_HEADER, None);
}

/// Answers locally; `Pause` when the host took the reply, `Continue` when it refused.
fn send_local(status: u32, headers: &[(String, String)], body: &[u8]) -> Action {
    if host::send_local_text(status, "switchyard_router", headers, body) {
        Action::Pause
    } else {
        Action::Continue
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `...`.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    s
}
