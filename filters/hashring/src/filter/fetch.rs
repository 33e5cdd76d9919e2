//! Glue of the dynamic host set (`hosts_from`): the fetch lease, the fetch, storing a good
//! list, and adopting a new version. The decisions are in `crate::hostset`; stat writes are
//! collected in an [`Effects`] the callback hands to `host::apply`.

use super::runtime::store_error;
use super::{HashringRoot, Runtime};
use crate::config::HostsFrom;
use crate::hostset::{self, FetchAnswer, HostSetRecord, MAX_HOST_LIST_BYTES};
use crate::metrics::{Effects, Metric};
use crate::state;
use proxy_wasm::traits::Context;
use std::rc::Rc;
use switchyard_core::host::{self, HostStore};
use switchyard_core::shared::{cas_update, CasOutcome, SharedStore, Update};

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
        let answer = FetchAnswer::of(status, body_size);
        let mut fx = answer.effects();
        match answer {
            FetchAnswer::NotModified => {}
            FetchAnswer::TooLarge => {
                log::warn!("switchyard hashring: hosts_from body of {body_size} bytes exceeds {MAX_HOST_LIST_BYTES}, keeping the last good host set");
            }
            FetchAnswer::List => {
                let body = host::http_call_body(body_size).unwrap_or_default();
                let etag = host::http_call_header("etag").unwrap_or_default();
                store_fetched(&rt, &body, &etag, &mut fx);
            }
            FetchAnswer::Failed(other) => {
                log::warn!("switchyard hashring: hosts_from answered {other}, keeping the last good host set");
            }
        }
        host::apply(fx, &rt.metrics);
    }
}

fn store_fetched(rt: &Runtime, body: &[u8], etag: &str, fx: &mut Effects) {
    let hosts = match hostset::check_fetched(&rt.config, body) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("switchyard hashring: rejected host set from hosts_from, keeping the last good one: {e}");
            fx.count(Metric::HostsFromRejected);
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
            fx.count(Metric::HostsFromUpdates);
            rt.sync_host_set(fx);
        }
        Some(false) => {}
        None => {
            log::warn!("switchyard hashring: could not store the fetched host set");
            fx.count(Metric::StoreErrors);
        }
    }
}

impl HashringRoot {
    /// Claims the fetch lease and, if this worker won it, asks the `hosts_from` endpoint.
    pub(super) fn maybe_fetch(&mut self, rt: &Runtime, hf: &HostsFrom, fx: &mut Effects) {
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
            CasOutcome::Failed(e) => return store_error(fx, "host set lease failed", e),
        };
        let owned = hostset::fetch_headers(hf, &etag);
        let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match host::dispatch_http_call(&hf.cluster, &headers, &[], hf.timeout.std()) {
            Ok(_) => {
                self.fetching = true;
                fx.count(Metric::HostsFromFetches);
            }
            Err(e) => {
                log::warn!(
                    "switchyard hashring: cannot fetch hosts from cluster {}: {e:?}",
                    hf.cluster
                );
                fx.count(Metric::HostsFromErrors);
            }
        }
    }
}

impl Runtime {
    /// Adopts the shared host set if its version changed since this worker last looked.
    pub(super) fn sync_host_set(&self, fx: &mut Effects) {
        let record = match HostStore.get(&self.hostset_key) {
            Ok((v, _)) => HostSetRecord::decode(v.as_deref()),
            Err(e) => return store_error(fx, "host set unavailable", e),
        };
        if record.version == 0 || record.version == self.current().version {
            return;
        }
        match record.hosts() {
            Some(hosts) => {
                let set = self.build_set(hosts, record.version, fx);
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
                fx.count(Metric::StoreErrors);
            }
        }
    }
}
