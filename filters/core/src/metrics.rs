//! Envoy stats from a filter: counters, gauges and histograms named
//! `switchyard.<filter>.<name>`. Envoy shows them in its stats under the `wasmcustom.` namespace
//! (e.g. `wasmcustom.switchyard.ratelimit.per-ip.allowed`). Stats are process-wide in Envoy:
//! every worker's VM that defines the same name shares one stat.

use crate::abi::{self, MetricKind as MetricType};
use std::cell::RefCell;
use std::collections::HashMap;

pub struct Metrics {
    prefix: String,
    /// Ids by kind (counter, gauge, histogram) and name: a per-request lookup hashes the name
    /// without allocating.
    ids: [RefCell<HashMap<String, u32>>; 3],
}

fn kind_tag(t: MetricType) -> usize {
    match t {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 2,
    }
}

impl Metrics {
    pub fn new(filter: &str) -> Self {
        Metrics {
            prefix: format!("switchyard.{filter}."),
            ids: Default::default(),
        }
    }

    /// The full stat name for `name`.
    pub fn full_name(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }

    fn id(&self, t: MetricType, name: &str) -> Option<u32> {
        let ids = self.ids.get(kind_tag(t))?;
        if let Some(id) = ids.borrow().get(name) {
            return Some(*id);
        }
        let id = abi::define_metric(t, &self.full_name(name)).ok()?;
        ids.borrow_mut().insert(name.to_string(), id);
        Some(id)
    }

    /// Defines a metric up front so it shows (as 0) before the first event.
    pub fn define_counter(&self, name: &str) {
        let _ = self.id(MetricType::Counter, name);
    }

    pub fn define_gauge(&self, name: &str) {
        let _ = self.id(MetricType::Gauge, name);
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    pub fn add(&self, name: &str, by: u64) {
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = abi::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    pub fn set_gauge(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = abi::record_metric(id, value);
        }
    }

    pub fn add_gauge(&self, name: &str, by: i64) {
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = abi::increment_metric(id, by);
        }
    }

    pub fn record(&self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = abi::record_metric(id, value);
        }
    }

    pub fn get_counter(&self, name: &str) -> Option<u64> {
        let id = self.id(MetricType::Counter, name)?;
        abi::get_metric(id).ok()
    }
}
