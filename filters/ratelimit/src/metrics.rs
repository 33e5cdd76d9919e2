//! The filter's stats: `switchyard.ratelimit.<stat>` and, per rule,
//! `switchyard.ratelimit.<rule>.<event>` (the rule's index is the subject).

use switchyard_core::metric_enum;

metric_enum! {
    pub enum Metric {
        SlotsInUse = "slots_in_use": Gauge,
        EvictedIdle = "evicted_idle",
        EvictedActive = "evicted_active",
        RollbackFailures = "rollback_failures",
    }
}

metric_enum! {
    pub enum Event {
        Allowed = "allowed",
        Limited = "limited",
        ShadowLimited = "shadow_limited",
        FailureAllowed = "failure_allowed",
        FailureDenied = "failure_denied",
        CasRetries = "cas_retries",
        GlobalCalls = "global_calls",
        GlobalOverLimit = "global_over_limit",
        GlobalFailureAllowed = "global_failure_allowed",
        GlobalFailureDenied = "global_failure_denied",
        LeaseHits = "lease_hits",
        GlobalCoalesced = "global_coalesced",
        GlobalDeniedRemembered = "global_denied_remembered",
    }
}

/// Events every rule counts.
pub const RULE_EVENTS: [Event; 6] = [
    Event::Allowed,
    Event::Limited,
    Event::ShadowLimited,
    Event::FailureAllowed,
    Event::FailureDenied,
    Event::CasRetries,
];

/// Events only `scope: global` rules count.
pub const GLOBAL_EVENTS: [Event; 7] = [
    Event::GlobalCalls,
    Event::GlobalOverLimit,
    Event::GlobalFailureAllowed,
    Event::GlobalFailureDenied,
    Event::LeaseHits,
    Event::GlobalCoalesced,
    Event::GlobalDeniedRemembered,
];

pub type Metrics = switchyard_core::Metrics<Metric, Event>;
pub type Effects = switchyard_core::Effects<Metric, Event>;
