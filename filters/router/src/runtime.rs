//! Per-VM state of the router: the configuration, the table in force with its stats, and the
//! reload fetch. Effects reach the host only through [`InForce::apply`] (`host::apply`).

use crate::config::RouterConfig;
use crate::metrics::{subject_labels, Effects, Metrics};
use crate::plan::{reload_effects, version_effects, Reload};
use crate::reload::{self, FetchResult, Keys};
use crate::table::Table;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use switchyard_core::host::{self, Applied, HostStore};
use switchyard_core::rng::XorShift;

/// A route table in force on this worker, with its stats: the per-route subjects are its
/// routes, then the default. A request keeps the one it was decided with across reloads.
pub struct InForce {
    pub table: Table,
    pub version: u64,
    metrics: Metrics,
}

impl InForce {
    fn new(table: Table, version: u64) -> Rc<Self> {
        let metrics = Metrics::new("router");
        metrics.set_subjects(subject_labels(&table), &[]);
        Rc::new(InForce {
            table,
            version,
            metrics,
        })
    }

    /// Carries out effects decided with this table.
    pub fn apply(&self, effects: Effects) -> Applied {
        host::apply(effects, &self.metrics)
    }
}

struct Live {
    current: Rc<InForce>,
    /// The last shared version looked at (parsed or not), so each version is parsed once.
    seen: u64,
}

/// State of one plugin instance on one worker, shared by its root and HTTP contexts.
pub struct Plugin {
    pub config: RouterConfig,
    keys: Option<Keys>,
    live: RefCell<Live>,
    pub root_context_id: u32,
    rng: Cell<XorShift>,
}

impl Plugin {
    pub fn new(config: RouterConfig, root_context_id: u32) -> Rc<Self> {
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
        let seed = host::now_nanos() ^ (u64::from(root_context_id) << 32);
        let plugin = Plugin {
            live: RefCell::new(Live {
                current: InForce::new(config.table.clone(), 0),
                seen: 0,
            }),
            config,
            keys,
            root_context_id,
            rng: Cell::new(XorShift::new(seed)),
        };
        // A table another worker (or an earlier plugin configuration) published stays in force.
        plugin.refresh();
        plugin.apply(version_effects(plugin.current().version));
        Rc::new(plugin)
    }

    /// The table in force.
    pub fn current(&self) -> Rc<InForce> {
        self.live.borrow().current.clone()
    }

    /// Carries out effects outside a request (reload stats).
    fn apply(&self, effects: Effects) {
        self.current().apply(effects);
    }

    fn adopt(&self, table: Table, version: u64) {
        let mut live = self.live.borrow_mut();
        live.current = InForce::new(table, version);
        live.seen = live.seen.max(version);
    }

    /// Picks up a newer table published by any worker (one 8-byte shared-data read).
    pub fn refresh(&self) {
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
                live.current = InForce::new(table, version);
                drop(live);
                self.apply(version_effects(version));
            }
            Err(e) => log::error!(
                "switchyard router: shared table version {version} is invalid for this configuration, keeping version {}: {e}",
                self.current().version
            ),
        }
    }

    pub fn random(&self) -> u64 {
        XorShift::next_in(&self.rng)
    }
}

/// The reload fetch of one root context.
#[derive(Default)]
pub struct Fetcher {
    token: Option<u32>,
    /// The last fetch failure logged, so an endpoint that stays down logs once, not per interval.
    last_failure: Option<String>,
}

impl Fetcher {
    /// Sends the fetch if this worker wins the lease of a due one.
    pub fn start(&mut self, plugin: &Plugin) {
        let (Some(spec), Some(keys)) = (&plugin.config.reload, &plugin.keys) else {
            return;
        };
        if self.token.is_some() {
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
            Ok(token) => self.token = Some(token),
            Err(e) => {
                // Release the lease: the next attempt is one interval away, not interval + timeout.
                reload::finish_fetch(&HostStore, keys, now, spec.interval.as_nanos(), None);
                plugin.apply(reload_effects(Reload::Failed));
                log::warn!(
                    "switchyard router: cannot fetch the route table from cluster {:?}: {e:?}",
                    spec.cluster
                );
            }
        }
    }

    /// Takes the answer to this fetcher's call (`false` for another token).
    pub fn finish(&mut self, plugin: &Plugin, token: u32, body_size: usize) -> bool {
        if self.token != Some(token) {
            return false;
        }
        self.token = None;
        if let Some(r) = self.evaluate(plugin, body_size) {
            plugin.apply(reload_effects(r));
        }
        true
    }

    fn evaluate(&mut self, plugin: &Plugin, body_size: usize) -> Option<Reload> {
        let (Some(spec), Some(keys)) = (&plugin.config.reload, &plugin.keys) else {
            return None;
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
        let in_force = plugin.current().version;
        Some(match result {
            FetchResult::NotModified => {
                self.last_failure = None;
                Reload::NotModified
            }
            FetchResult::Failed(why) => {
                if self.last_failure.as_deref() != Some(why.as_str()) {
                    log::warn!(
                        "switchyard router: fetching the route table from {}{} failed: {why}; keeping version {in_force}",
                        spec.cluster,
                        spec.path,
                    );
                    self.last_failure = Some(why);
                }
                Reload::Failed
            }
            FetchResult::Rejected { error, .. } => {
                self.last_failure = None;
                log::error!(
                    "switchyard router: rejected reloaded route table from {}{}: {error}; keeping version {in_force}",
                    spec.cluster,
                    spec.path,
                );
                Reload::Rejected
            }
            FetchResult::Accepted { table, body, .. } => {
                self.last_failure = None;
                match reload::publish(&HostStore, keys, &body) {
                    Ok(version) if version != in_force => {
                        let routes = table.routes().len();
                        plugin.adopt(*table, version);
                        log::info!(
                            "switchyard router: route table version {version} in force ({routes} routes)"
                        );
                        Reload::Accepted(version)
                    }
                    Ok(_) => Reload::NotModified,
                    Err(e) => {
                        log::error!(
                            "switchyard router: cannot publish the reloaded route table: {e:?}"
                        );
                        Reload::Failed
                    }
                }
            }
        })
    }
}
