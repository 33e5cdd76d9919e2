//! Shared vocabulary of the Switchyard filters.
//!
//! Everything here except [`host`] and [`metrics`] is pure logic with no proxy-wasm dependency,
//! so it is unit-tested natively. Filters build a [`RequestView`] once per request in their glue
//! code, run the match and key languages against it, decide in pure code, and hand the decision's
//! [`Effects`] to [`host::apply`], the one place that carries effects out through the host.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod abi;
pub mod config;
pub mod decimal;
pub mod duration;
pub mod effects;
pub mod hash;
pub mod host;
pub mod keys;
pub mod matcher;
pub mod metrics;
pub mod request;
pub mod rng;
pub mod routing;
pub mod shared;
pub mod stages;
pub mod zipf;

pub use config::{parse_config, ConfigError};
pub use duration::Duration;
pub use effects::{Effects, Flow, HeaderEdit, LocalReply};
pub use keys::{KeySource, KeySources};
pub use matcher::{Captures, Matcher};
pub use metrics::{Metric, Metrics, NoSubject, Stat, StatWrite};
pub use request::RequestView;
