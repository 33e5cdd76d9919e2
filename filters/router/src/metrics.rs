//! The router's stats, typed: the fixed ones (`switchyard.router.<name>`) and the events counted
//! per route (`switchyard.router.route.<route>.<event>`, the default action as route `default`).

use crate::table::{Matched, Table};

switchyard_core::metric_enum! {
    /// The fixed stats, all defined when the plugin is configured (they show as 0 until used).
    pub enum Metric {
        ReloadsOk = "reloads_ok",
        ReloadsRejected = "reloads_rejected",
        ReloadsNotModified = "reloads_not_modified",
        ReloadsFailed = "reloads_failed",
        NoRoute = "no_route",
        MirrorSkipped = "mirror_skipped",
        MirrorFailed = "mirror_failed",
        TableVersion = "table_version": Gauge,
    }
}

switchyard_core::metric_enum! {
    /// What is counted per route, each defined on its first event.
    pub enum Event {
        Routed = "routed",
        Redirected = "redirected",
        Responded = "responded",
        Mirrored = "mirrored",
    }
}

pub type Metrics = switchyard_core::Metrics<Metric, Event>;
pub type Effects = switchyard_core::Effects<Metric, Event>;

/// The stat subjects of a table, in subject order: its routes in table order, then the default.
pub fn subject_labels(table: &Table) -> impl Iterator<Item = String> + '_ {
    table
        .routes()
        .iter()
        .map(|r| format!("route.{}", r.name))
        .chain(std::iter::once(format!(
            "route.{}",
            table.name(Matched::Default)
        )))
}

/// The subject a decision's events are counted under (`None` when nothing matched).
pub fn subject(table: &Table, m: Matched) -> Option<usize> {
    match m {
        Matched::Route(i) => Some(i),
        Matched::Default => Some(table.routes().len()),
        Matched::Nothing => None,
    }
}
