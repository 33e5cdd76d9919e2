//! The per-configuration state of the glue: reads the health / load / latency snapshot a plan
//! needs, runs the bounded-load admission CAS around the pure plan, and carries out the
//! shared-data side of an [`OutcomePlan`] (releases, health records, latency samples). Stat
//! writes are collected in an [`Effects`] the calling callback hands to `host::apply`.

use crate::config::{Config, Host};
use crate::metrics::{Effects, Event, Metric, Metrics, Subjects};
use crate::outcome::{self, OutcomePlan};
use crate::plan::{self, HostSet, P2cSnapshot, SelectionPlan, Snapshot};
use crate::state::{self, HealthChange, Keys};
use crate::{hostset, p2c};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use switchyard_core::host::{self, HostStore};
use switchyard_core::rng::XorShift;
use switchyard_core::shared::{cas_update, ensure_key, SharedStore, Update};
use switchyard_core::Metric as _;

/// Builds a host set; new hosts get their per-host counters defined (shown as 0 before their
/// first event).
fn build_set(
    config: &Config,
    metrics: &Metrics,
    subjects: &mut Subjects,
    hosts: Vec<Host>,
    version: u64,
    fx: &mut Effects,
) -> HostSet {
    let known = subjects.len();
    let set = HostSet::new(config, hosts, version, subjects);
    if subjects.len() > known {
        metrics.set_subjects(subjects.labels().iter().cloned(), Event::ALL);
    }
    fx.count(Metric::TableRebuilds);
    set
}

/// Logs a shared-data failure and counts it in `store_errors`.
pub(super) fn store_error(fx: &mut Effects, what: &str, e: impl std::fmt::Debug) {
    log::warn!("switchyard hashring: {what}: {e:?}");
    fx.count(Metric::StoreErrors);
}

/// Everything one configuration needs at request time, built in `on_configure`.
pub struct Runtime {
    pub(super) config: Config,
    pub(super) keys: Keys,
    pub(super) hostset_key: String,
    pub(super) metrics: Metrics,
    /// Every host any set has had, numbered for the per-host counters.
    subjects: RefCell<Subjects>,
    pub(super) set: RefCell<Rc<HostSet>>,
    /// This VM's identity in the shared in-flight counts (bounded loads only).
    pub(super) worker: state::Worker,
    /// `p2c_ewma`: this worker's in-flight requests per host address.
    pub(super) in_flight: RefCell<HashMap<String, u64>>,
    /// `p2c_ewma`: this worker's random source.
    pub(super) rng: Cell<XorShift>,
}

impl Runtime {
    fn new(config: Config, scope: &str, fx: &mut Effects) -> Runtime {
        let metrics = Metrics::new("hashring");
        let mut subjects = Subjects::default();
        let set = build_set(
            &config,
            &metrics,
            &mut subjects,
            config.hosts.clone(),
            0,
            fx,
        );
        Runtime {
            keys: Keys::new(scope),
            hostset_key: format!("switchyard.hashring.{scope}.hostset"),
            set: RefCell::new(Rc::new(set)),
            config,
            metrics,
            subjects: RefCell::new(subjects),
            worker: state::Worker::default(),
            in_flight: RefCell::new(HashMap::new()),
            rng: Cell::new(XorShift::new(1)),
        }
    }

    /// Builds the configuration's runtime: claims a worker number (bounded loads), creates the
    /// shared stores the configuration uses, seeds the random source and adopts a host set
    /// another worker already fetched. Its stat writes go to `fx`.
    pub(super) fn start(config: Config, scope: &str, fx: &mut Effects) -> Runtime {
        let mut runtime = Runtime::new(config, scope, fx);
        if runtime.config.bounded_load.is_some() {
            match state::Worker::claim(&HostStore, &runtime.keys.workers) {
                Ok(w) => runtime.worker = w,
                Err(e) => store_error(fx, "cannot claim a worker number", e),
            }
        }
        // Only the stores this configuration uses are created (shared data cannot be deleted).
        let c = &runtime.config;
        let wanted = [
            (
                c.bounded_load.is_some(),
                &runtime.keys.loads,
                state::LOADS_EMPTY,
            ),
            (c.health.is_some(), &runtime.keys.health, state::EMPTY),
            (c.hosts_from.is_some(), &runtime.hostset_key, hostset::EMPTY),
            (c.p2c.is_some(), &runtime.keys.ewma, p2c::EMPTY),
        ];
        // Each worker draws its own candidates.
        runtime.rng.set(XorShift::new(
            host::now_nanos() ^ runtime.worker.id.rotate_left(29),
        ));
        for (_, key, initial) in wanted.iter().filter(|w| w.0) {
            if let Err(e) = ensure_key(&HostStore, key, initial) {
                store_error(fx, &format!("cannot create shared data {key}"), e);
            }
        }
        if runtime.config.hosts_from.is_some() {
            runtime.sync_host_set(fx);
        }
        runtime
    }

    pub(super) fn build_set(&self, hosts: Vec<Host>, version: u64, fx: &mut Effects) -> HostSet {
        let mut subjects = self.subjects.borrow_mut();
        build_set(
            &self.config,
            &self.metrics,
            &mut subjects,
            hosts,
            version,
            fx,
        )
    }

    pub(super) fn current(&self) -> Rc<HostSet> {
        self.set.borrow().clone()
    }

    /// Which hosts may be picked now (all, without `health` or when the state is unreadable).
    pub(super) fn healthy(&self, set: &HostSet, now: u64, fx: &mut Effects) -> Vec<bool> {
        let n = set.hosts.len();
        if self.config.health.is_none() {
            return vec![true; n];
        }
        match state::read_health(&HostStore, &self.keys.health) {
            Ok(map) => state::healthy_mask(&set.hosts, &map, now),
            Err(e) => {
                store_error(fx, "health state unavailable", e);
                vec![true; n]
            }
        }
    }

    /// Reads the snapshot the configuration's strategy needs and plans the request's host
    /// choice. Bounded loads plan inside the admission CAS, so the count taken is exact.
    /// Shared-data failures are counted in `fx`.
    pub(super) fn plan(
        &self,
        set: &HostSet,
        keying: &plan::Keying,
        healthy: &[bool],
        now: u64,
        fx: &mut Effects,
    ) -> SelectionPlan {
        let mut snap = Snapshot {
            healthy,
            loads: None,
            p2c: None,
            now,
        };
        if self.config.p2c.is_some() {
            let ewma = match HostStore.get(&self.keys.ewma) {
                Ok((bytes, _)) => p2c::decode(bytes.as_deref()),
                Err(e) => {
                    store_error(fx, "latency estimates unavailable", e);
                    Default::default()
                }
            };
            let in_flight = self.in_flight.borrow();
            let draws = (XorShift::next_in(&self.rng), XorShift::next_in(&self.rng));
            snap.p2c = Some(P2cSnapshot {
                ewma: &ewma,
                in_flight: &in_flight,
                draws,
            });
            return plan::plan_selection(&self.config, set, keying, &snap);
        }
        if let Some(factor) = self.config.bounded_load {
            let (keys, worker, now_ms) = (&self.keys.loads, &self.worker, now / 1_000_000);
            let admitted = state::admit_with(
                &HostStore,
                keys,
                worker,
                now_ms,
                &set.hosts,
                factor,
                |loads| {
                    let snap = Snapshot {
                        healthy,
                        loads: Some(loads),
                        p2c: None,
                        now,
                    };
                    let p = plan::plan_selection(&self.config, set, keying, &snap);
                    let chosen = p.selection.chosen();
                    (p, chosen)
                },
            );
            match admitted {
                Ok(p) => return p,
                // Fail open: pick without the bound rather than fail the request.
                Err(e) => store_error(fx, "in-flight counts unavailable", e),
            }
        }
        plan::plan_selection(&self.config, set, keying, &snap)
    }

    /// Carries out the end of a stream: releases, health records, the latency sample. Returns
    /// the stat writes (ejections, shared-data failures).
    pub(super) fn settle(&self, set: &HostSet, plan: OutcomePlan, now: u64) -> Effects {
        let mut fx = Effects::new();
        if let Some(address) = &plan.release_load {
            if let Err(e) = state::release(
                &HostStore,
                &self.keys.loads,
                &self.worker,
                now / 1_000_000,
                address,
            ) {
                // Kept by the worker and written with its next admission or release.
                store_error(&mut fx, "in-flight release deferred", e);
            }
        }
        if let Some(health) = &self.config.health {
            for (h, failed) in plan.health {
                let Some(address) = set.hosts.get(h).map(|x| x.address.as_str()) else {
                    continue;
                };
                let cooldown = health.cooldown.as_nanos();
                match state::record_outcome(
                    &HostStore,
                    &self.keys.health,
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
                        set.count(&mut fx, h, Event::Ejections);
                    }
                    Ok(HealthChange::None) => {}
                    Err(e) => store_error(&mut fx, "health update failed", e),
                }
            }
        }
        if let Some(address) = &plan.release_in_flight {
            if let Some(n) = self.in_flight.borrow_mut().get_mut(address) {
                *n = n.saturating_sub(1);
            }
        }
        if let (Some((served, sample)), Some(p)) = (&plan.latency, &self.config.p2c) {
            let out = cas_update(&HostStore, &self.keys.ewma, state::CAS_RETRIES, |cur| {
                let mut map = p2c::decode(cur);
                outcome::fold_latency(&mut map, served, *sample, now, p.decay_ns, Some(&set.hosts));
                Update::Write(p2c::encode(&map), ())
            });
            if out.result().is_none() {
                fx.count(Metric::StoreErrors);
            }
        }
        fx
    }
}
