//! The filter's stats, typed: the filter-wide counters ([`Metric`]) and the per-host ones
//! ([`Event`], counted per subject `host.<address label>`). Envoy shows them as
//! `wasmcustom.switchyard.hashring.<name>` and `wasmcustom.switchyard.hashring.host.<h>.<event>`.
//!
//! The subjects are every host a host set of the configuration has had ([`Subjects`]): a host
//! keeps its subject number across host-set changes, so a request decided on an older set still
//! counts under its host's name.

use std::collections::HashMap;

switchyard_core::metric_enum! {
    /// Filter-wide counters, all defined when the configuration loads.
    pub enum Metric {
        TableRebuilds = "table_rebuilds",
        NoKey = "no_key",
        AllUnhealthy = "all_unhealthy",
        OverCapacity = "over_capacity",
        StoreErrors = "store_errors",
        OutputErrors = "output_errors",
        HostsFromFetches = "hosts_from_fetches",
        HostsFromNotModified = "hosts_from_not_modified",
        HostsFromUpdates = "hosts_from_updates",
        HostsFromRejected = "hosts_from_rejected",
        HostsFromErrors = "hosts_from_errors",
        OtherCluster = "other_cluster",
    }
}

switchyard_core::metric_enum! {
    /// Per-host counters, defined for every host of every set.
    pub enum Event {
        Picks = "picks",
        Spills = "spills",
        HealthSkips = "health_skips",
        Ejections = "ejections",
    }
}

pub type Metrics = switchyard_core::Metrics<Metric, Event>;
pub type Effects = switchyard_core::Effects<Metric, Event>;

/// Stat names use `.` as a separator: `127.0.0.1:8081` becomes `127_0_0_1_8081`.
pub fn stat_label(address: &str) -> String {
    address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}

/// Distinct host addresses with stats of their own over a VM's life (`hosts_from` lists can
/// churn); hosts seen after that count under [`OTHER_HOSTS`]. Envoy never drops a stat, so this
/// also bounds the stats the filter adds to Envoy's store.
pub const MAX_HOST_SUBJECTS: usize = 8 * crate::config::MAX_HOSTS;

/// The label of the hosts beyond [`MAX_HOST_SUBJECTS`].
pub const OTHER_HOSTS: &str = "host.other";

/// The per-host stat subjects of one configuration: the label (`host.127_0_0_1_8081`) of every
/// host any of its sets has had, numbered in first-seen order, up to [`MAX_HOST_SUBJECTS`]
/// (then one more, [`OTHER_HOSTS`], shared by all later ones).
#[derive(Debug, Default)]
pub struct Subjects {
    labels: Vec<String>,
    index: HashMap<String, usize>,
}

impl Subjects {
    /// The subject number of the host at `address`, numbering it if it is new.
    pub fn subject(&mut self, address: &str) -> usize {
        let label = format!("host.{}", stat_label(address));
        if let Some(i) = self.index.get(&label) {
            return *i;
        }
        if self.labels.len() >= MAX_HOST_SUBJECTS {
            return self.other();
        }
        let i = self.labels.len();
        self.labels.push(label.clone());
        self.index.insert(label, i);
        i
    }

    /// The subject shared by the hosts beyond the bound.
    fn other(&mut self) -> usize {
        if let Some(i) = self.index.get(OTHER_HOSTS) {
            return *i;
        }
        let i = self.labels.len();
        self.labels.push(OTHER_HOSTS.to_string());
        self.index.insert(OTHER_HOSTS.to_string(), i);
        i
    }

    /// Every label, by subject number.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::Metric as _;

    #[test]
    fn stat_names_are_unchanged() {
        // Tests, docs, the demo and dashboards read these names.
        let fixed: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            fixed,
            [
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
            ]
        );
        let per_host: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(per_host, ["picks", "spills", "health_skips", "ejections"]);
    }

    #[test]
    fn host_subjects_are_bounded_and_later_hosts_share_one() {
        let mut s = Subjects::default();
        for i in 0..MAX_HOST_SUBJECTS {
            assert_eq!(s.subject(&format!("10.{}.{}.1:80", i / 256, i % 256)), i);
        }
        let other = s.subject("192.168.0.1:80");
        assert_eq!(other, MAX_HOST_SUBJECTS);
        assert_eq!(s.subject("192.168.0.2:80"), other);
        assert_eq!(s.labels().last().map(String::as_str), Some(OTHER_HOSTS));
        assert_eq!(s.len(), MAX_HOST_SUBJECTS + 1);
        // Known hosts keep their own.
        assert_eq!(s.subject("10.0.7.1:80"), 7);
    }

    #[test]
    fn stat_labels_have_no_separators() {
        assert_eq!(stat_label("127.0.0.1:8081"), "127_0_0_1_8081");
        assert_eq!(stat_label("[::1]:80"), "1__80");
    }

    #[test]
    fn a_host_keeps_its_subject_across_sets() {
        let mut s = Subjects::default();
        assert!(s.is_empty());
        assert_eq!(s.subject("10.0.0.1:80"), 0);
        assert_eq!(s.subject("10.0.0.2:80"), 1);
        // A later set: the known host keeps its number, a new one comes after.
        assert_eq!(s.subject("10.0.0.3:80"), 2);
        assert_eq!(s.subject("10.0.0.2:80"), 1);
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.labels(),
            ["host.10_0_0_1_80", "host.10_0_0_2_80", "host.10_0_0_3_80"]
        );
    }
}
