//! Envoy stats from a filter, typed: each filter names its stats with two enums, its fixed stats
//! (`M`) and the events it counts per subject (`S`: a ratelimit rule, a router route, a
//! hashring host). Stats are named `switchyard.<filter>.<name>` and
//! `switchyard.<filter>.<subject>.<event>`; Envoy shows them under the `wasmcustom.` namespace
//! (e.g. `wasmcustom.switchyard.ratelimit.per-ip.allowed`). Stats are process-wide in Envoy:
//! every worker's VM that defines the same name shares one stat.
//!
//! A write is an index into a table of ids defined once (no name formatting or hashing per
//! request). Pure code says which stats change in [`crate::effects::Effects`]; the glue applies
//! them here.

use crate::abi::{self, MetricKind};
use std::cell::RefCell;

/// One filter's stat names: an enum whose variants are listed in `ALL` in index order.
pub trait Metric: Copy + std::fmt::Debug + PartialEq + 'static {
    /// Every variant, in [`Metric::index`] order.
    const ALL: &'static [Self];
    /// The stat's name below the filter's (or the subject's) prefix.
    fn name(self) -> &'static str;
    /// Position in `ALL`.
    fn index(self) -> usize;
    fn kind(self) -> MetricKind {
        MetricKind::Counter
    }
}

/// The subject events of a filter that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSubject {}

impl Metric for NoSubject {
    const ALL: &'static [Self] = &[];
    fn name(self) -> &'static str {
        match self {}
    }
    fn index(self) -> usize {
        match self {}
    }
}

/// One stat: a fixed one, or an event of subject number `usize`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat<M, S = NoSubject> {
    Fixed(M),
    Of(usize, S),
}

/// A change to a stat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatWrite<M, S = NoSubject> {
    /// Adds to a counter (or a gauge: a signed delta).
    Add(Stat<M, S>, i64),
    /// Sets a gauge.
    Set(Stat<M, S>, u64),
}

struct Subject {
    /// `switchyard.<filter>.<subject>.`
    prefix: String,
    ids: Vec<Option<u32>>,
}

pub struct Metrics<M: Metric, S: Metric = NoSubject> {
    /// `switchyard.<filter>.`
    prefix: String,
    fixed: RefCell<Vec<Option<u32>>>,
    subjects: RefCell<Vec<Subject>>,
    _kinds: std::marker::PhantomData<(M, S)>,
}

impl<M: Metric, S: Metric> Metrics<M, S> {
    /// The filter's stats, every fixed one defined now so it shows (as 0) before its first
    /// event.
    pub fn new(filter: &str) -> Self {
        let m = Metrics {
            prefix: format!("switchyard.{filter}."),
            fixed: RefCell::new(vec![None; M::ALL.len()]),
            subjects: RefCell::new(Vec::new()),
            _kinds: std::marker::PhantomData,
        };
        for f in M::ALL {
            let _ = m.id(Stat::Fixed(*f));
        }
        m
    }

    /// Names the subjects (`label` is the stat name part, e.g. `route.api`), replacing the
    /// previous ones, and defines `events` for each of them up front.
    pub fn set_subjects<I: IntoIterator<Item = String>>(&self, labels: I, events: &[S]) {
        let subjects = labels
            .into_iter()
            .map(|label| Subject {
                prefix: format!("{}{label}.", self.prefix),
                ids: vec![None; S::ALL.len()],
            })
            .collect();
        *self.subjects.borrow_mut() = subjects;
        let n = self.subjects.borrow().len();
        for i in 0..n {
            for e in events {
                let _ = self.id(Stat::Of(i, *e));
            }
        }
    }

    /// Defines `events` for one subject up front (those that only some subjects have).
    pub fn define_for(&self, subject: usize, events: &[S]) {
        for e in events {
            let _ = self.id(Stat::Of(subject, *e));
        }
    }

    /// The stat's full name (`None` for an unknown subject).
    pub fn full_name(&self, stat: Stat<M, S>) -> Option<String> {
        match stat {
            Stat::Fixed(m) => Some(format!("{}{}", self.prefix, m.name())),
            Stat::Of(i, e) => self
                .subjects
                .borrow()
                .get(i)
                .map(|s| format!("{}{}", s.prefix, e.name())),
        }
    }

    fn kind(stat: Stat<M, S>) -> MetricKind {
        match stat {
            Stat::Fixed(m) => m.kind(),
            Stat::Of(_, e) => e.kind(),
        }
    }

    fn id(&self, stat: Stat<M, S>) -> Option<u32> {
        let cached = match stat {
            Stat::Fixed(m) => self.fixed.borrow().get(m.index()).copied().flatten(),
            Stat::Of(i, e) => self
                .subjects
                .borrow()
                .get(i)
                .and_then(|s| s.ids.get(e.index()).copied().flatten()),
        };
        if cached.is_some() {
            return cached;
        }
        let id = abi::define_metric(Self::kind(stat), &self.full_name(stat)?).ok()?;
        match stat {
            Stat::Fixed(m) => {
                if let Some(slot) = self.fixed.borrow_mut().get_mut(m.index()) {
                    *slot = Some(id);
                }
            }
            Stat::Of(i, e) => {
                if let Some(slot) = self
                    .subjects
                    .borrow_mut()
                    .get_mut(i)
                    .and_then(|s| s.ids.get_mut(e.index()))
                {
                    *slot = Some(id);
                }
            }
        }
        Some(id)
    }

    /// Carries out stat writes (a zero add costs no host call).
    pub fn apply(&self, writes: &[StatWrite<M, S>]) {
        for w in writes {
            match *w {
                StatWrite::Add(_, 0) => {}
                StatWrite::Add(stat, by) => {
                    if let Some(id) = self.id(stat) {
                        let _ = abi::increment_metric(id, by);
                    }
                }
                StatWrite::Set(stat, value) => {
                    if let Some(id) = self.id(stat) {
                        let _ = abi::record_metric(id, value);
                    }
                }
            }
        }
    }

    /// Adds one to a fixed counter.
    pub fn inc(&self, m: M) {
        self.apply(&[StatWrite::Add(Stat::Fixed(m), 1)]);
    }

    /// Adds `by` to a fixed counter.
    pub fn add(&self, m: M, by: u64) {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        self.apply(&[StatWrite::Add(Stat::Fixed(m), by)]);
    }

    /// Adds one to a subject's counter.
    pub fn inc_of(&self, subject: usize, e: S) {
        self.apply(&[StatWrite::Add(Stat::Of(subject, e), 1)]);
    }

    /// Sets a fixed gauge.
    pub fn set_gauge(&self, m: M, value: u64) {
        self.apply(&[StatWrite::Set(Stat::Fixed(m), value)]);
    }

    /// A counter's current value (process-wide).
    pub fn get(&self, stat: Stat<M, S>) -> Option<u64> {
        abi::get_metric(self.id(stat)?).ok()
    }
}

/// Declares a filter's stat enum with its names: `metric_enum! { pub enum CacheMetric { Hits =
/// "hits", ... } }`. A variant may carry `: Gauge` after its name to be a gauge.
#[macro_export]
macro_rules! metric_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal $(: $kind:ident)?),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vm])* $v),* }
        impl $crate::metrics::Metric for $name {
            const ALL: &'static [Self] = &[$($name::$v),*];
            fn name(self) -> &'static str {
                match self { $($name::$v => $s),* }
            }
            fn index(self) -> usize {
                self as usize
            }
            fn kind(self) -> $crate::abi::MetricKind {
                match self { $($name::$v => $crate::metric_enum!(@kind $($kind)?)),* }
            }
        }
    };
    (@kind) => { $crate::abi::MetricKind::Counter };
    (@kind Gauge) => { $crate::abi::MetricKind::Gauge };
    (@kind Histogram) => { $crate::abi::MetricKind::Histogram };
}

#[cfg(test)]
mod tests {
    use super::*;

    metric_enum! {
        enum Fixed { Hits = "hits", Bytes = "bytes_in_use": Gauge }
    }
    metric_enum! {
        enum Event { Allowed = "allowed", Limited = "limited" }
    }

    #[test]
    fn enum_indexes_follow_all_and_names_and_kinds_are_declared() {
        for (i, m) in Fixed::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
        assert_eq!(Fixed::Hits.name(), "hits");
        assert_eq!(Fixed::Hits.kind(), MetricKind::Counter);
        assert_eq!(Fixed::Bytes.kind(), MetricKind::Gauge);
        assert_eq!(Event::Limited.index(), 1);
    }
}
