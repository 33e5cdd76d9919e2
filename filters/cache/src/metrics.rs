//! The cache's stats, typed: `switchyard.cache.<name>` (Envoy: `wasmcustom.switchyard.cache.
//! <name>`). Every one is defined when the plugin is configured, so it shows (as 0) before its
//! first event. The cache counts nothing per subject. Names are part of the interface (docs,
//! dashboards and tests read them): see docs/cache.md, *Metrics*.

use switchyard_core::NoSubject;

switchyard_core::metric_enum! {
    pub enum Metric {
        Hits = "hits",
        Misses = "misses",
        /// Stale serves.
        Stale = "stale",
        /// Stale entries sent upstream to revalidate.
        Revalidations = "revalidations",
        /// `304`s that refreshed an entry.
        Revalidated = "revalidated",
        BackgroundRevalidations = "background_revalidations",
        Stores = "stores",
        StoreFailures = "store_failures",
        Evictions = "evictions",
        /// Entries purged.
        Purges = "purges",
        PurgeDenied = "purge_denied",
        Invalidations = "invalidations",
        Bypass = "bypass",
        /// Waiters answered from a leader's result.
        Coalesced = "coalesced",
        TooLarge = "too_large",
        /// Misses passed through uncached: the worker already held `max_collect_bytes`.
        CollectBudgetExceeded = "collect_budget_exceeded",
        /// Hits (fresh or stale) served from the worker's L1 without reading the entry from
        /// shared data; also counted in `hits` or `stale`.
        L1Hits = "l1_hits",
        /// Misses sent upstream without coalescing: the key's last answer could not be stored
        /// (`uncacheable_ttl`); also counted in `misses`.
        UncacheablePasses = "uncacheable_passes",
        BytesInUse = "bytes_in_use": Gauge,
        Entries = "entries": Gauge,
    }
}

pub type Metrics = switchyard_core::Metrics<Metric, NoSubject>;
pub type Effects = switchyard_core::Effects<Metric, NoSubject>;

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::abi::MetricKind;
    use switchyard_core::Metric as _;

    #[test]
    fn stat_names_and_kinds_are_the_documented_ones() {
        let counters: Vec<&str> = Metric::ALL
            .iter()
            .filter(|m| m.kind() == MetricKind::Counter)
            .map(|m| m.name())
            .collect();
        assert_eq!(
            counters,
            [
                "hits",
                "misses",
                "stale",
                "revalidations",
                "revalidated",
                "background_revalidations",
                "stores",
                "store_failures",
                "evictions",
                "purges",
                "purge_denied",
                "invalidations",
                "bypass",
                "coalesced",
                "too_large",
                "collect_budget_exceeded",
                "l1_hits",
                "uncacheable_passes",
            ]
        );
        let gauges: Vec<&str> = Metric::ALL
            .iter()
            .filter(|m| m.kind() == MetricKind::Gauge)
            .map(|m| m.name())
            .collect();
        assert_eq!(gauges, ["bytes_in_use", "entries"]);
    }
}
