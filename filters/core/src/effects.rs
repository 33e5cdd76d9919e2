//! What a filter's decision does to a request, as a value: header edits, a local reply, whether
//! the request waits, and stat writes. Pure code builds it; [`crate::host::apply`] is the one
//! place that carries it out through the host, in a fixed order (stats, request headers, the
//! local reply or the response headers, then the flow).

use crate::metrics::{Metric, NoSubject, Stat, StatWrite};

/// One edit of a header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Replaces every value of the header.
    Set(String, Vec<u8>),
    /// Appends a value.
    Add(String, Vec<u8>),
    Remove(String),
}

impl HeaderEdit {
    pub fn set(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        HeaderEdit::Set(name.into(), value.into())
    }
    pub fn add(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        HeaderEdit::Add(name.into(), value.into())
    }
    pub fn remove(name: impl Into<String>) -> Self {
        HeaderEdit::Remove(name.into())
    }
    pub fn name(&self) -> &str {
        match self {
            HeaderEdit::Set(n, _) | HeaderEdit::Add(n, _) | HeaderEdit::Remove(n) => n,
        }
    }
}

/// An answer the proxy sends instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`), e.g. `switchyard_ratelimit`.
    pub details: &'static str,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn new(status: u32, details: &'static str) -> Self {
        LocalReply {
            status,
            details,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Whether the request goes on to the next filter now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flow {
    #[default]
    Continue,
    /// Waits for a callout (a resume or a local reply ends the wait).
    Pause,
}

/// The effects of one decision. A local reply, if the host takes it, replaces `response` edits
/// and pauses the request; if the host refuses it (the response already started), the request
/// goes on with `flow`.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects<M: Metric, S: Metric = NoSubject> {
    pub stats: Vec<StatWrite<M, S>>,
    pub request: Vec<HeaderEdit>,
    pub response: Vec<HeaderEdit>,
    pub reply: Option<LocalReply>,
    pub flow: Flow,
}

impl<M: Metric, S: Metric> Default for Effects<M, S> {
    fn default() -> Self {
        Effects {
            stats: Vec::new(),
            request: Vec::new(),
            response: Vec::new(),
            reply: None,
            flow: Flow::Continue,
        }
    }
}

impl<M: Metric, S: Metric> Effects<M, S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one of a fixed counter.
    pub fn count(&mut self, m: M) -> &mut Self {
        self.stats.push(StatWrite::Add(Stat::Fixed(m), 1));
        self
    }

    /// Adds `n` to a fixed counter (nothing for 0).
    pub fn count_n(&mut self, m: M, n: u64) -> &mut Self {
        if n > 0 {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.stats.push(StatWrite::Add(Stat::Fixed(m), n));
        }
        self
    }

    /// Adds `n` to a subject's counter (nothing for 0).
    pub fn count_of(&mut self, subject: usize, e: S, n: u64) -> &mut Self {
        if n > 0 {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.stats.push(StatWrite::Add(Stat::Of(subject, e), n));
        }
        self
    }

    /// Moves a gauge by `delta` (nothing for 0).
    pub fn gauge_by(&mut self, m: M, delta: i64) -> &mut Self {
        if delta != 0 {
            self.stats.push(StatWrite::Add(Stat::Fixed(m), delta));
        }
        self
    }

    /// Sets a gauge.
    pub fn gauge(&mut self, m: M, value: u64) -> &mut Self {
        self.stats.push(StatWrite::Set(Stat::Fixed(m), value));
        self
    }

    pub fn reply(mut self, reply: LocalReply) -> Self {
        self.reply = Some(reply);
        self
    }

    pub fn pause(mut self) -> Self {
        self.flow = Flow::Pause;
        self
    }

    /// Adds `more` after these effects: its stat writes and header edits after ours; its reply
    /// and its pause, if any, replace ours.
    pub fn append(&mut self, more: Effects<M, S>) {
        self.stats.extend(more.stats);
        self.request.extend(more.request);
        self.response.extend(more.response);
        if more.reply.is_some() {
            self.reply = more.reply;
        }
        if more.flow != Flow::Continue {
            self.flow = more.flow;
        }
    }

    /// Whether applying these effects touches nothing.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.request.is_empty()
            && self.response.is_empty()
            && self.reply.is_none()
            && self.flow == Flow::Continue
    }

    /// The value a counter would get added by these effects (for tests).
    pub fn added(&self, stat: Stat<M, S>) -> i64 {
        self.stats
            .iter()
            .filter_map(|w| match w {
                StatWrite::Add(s, n) if *s == stat => Some(*n),
                _ => None,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::metric_enum! {
        enum M { Hits = "hits", Size = "size": Gauge }
    }

    #[test]
    fn zero_counts_cost_nothing_and_counts_add_up() {
        let mut e: Effects<M> = Effects::new();
        e.count_n(M::Hits, 0).gauge_by(M::Size, 0);
        assert!(e.is_empty());
        e.count(M::Hits).count_n(M::Hits, 2).gauge_by(M::Size, -3);
        assert_eq!(e.added(Stat::Fixed(M::Hits)), 3);
        assert_eq!(e.added(Stat::Fixed(M::Size)), -3);
        assert!(!e.is_empty());
    }

    #[test]
    fn append_keeps_the_order_of_writes_and_edits_and_takes_the_later_reply() {
        let mut fx: Effects<M> = Effects::new();
        fx.count(M::Hits);
        fx.request.push(HeaderEdit::remove("a"));
        let mut more: Effects<M> = Effects::new().pause();
        more.count_n(M::Hits, 2);
        more.request.push(HeaderEdit::set("b", "1"));
        fx.append(more);
        assert_eq!(fx.stats.len(), 2);
        assert_eq!(fx.added(Stat::Fixed(M::Hits)), 3);
        assert_eq!(
            fx.request,
            [HeaderEdit::remove("a"), HeaderEdit::set("b", "1")]
        );
        assert_eq!((fx.reply.is_none(), fx.flow), (true, Flow::Pause));
        fx.append(Effects::new().reply(LocalReply::new(503, "x")));
        assert_eq!(fx.reply.map(|r| r.status), Some(503));
        assert_eq!(fx.flow, Flow::Pause);
    }

    #[test]
    fn a_reply_pauses_and_carries_its_headers() {
        let e: Effects<M> = Effects::new()
            .reply(
                LocalReply::new(429, "x")
                    .header("retry-after", "1")
                    .body("no"),
            )
            .pause();
        assert_eq!(e.flow, Flow::Pause);
        let r = e
            .reply
            .as_ref()
            .map(|r| (r.status, r.headers.len(), r.body.clone()));
        assert_eq!(r, Some((429, 1, b"no".to_vec())));
        assert_eq!(HeaderEdit::remove("a").name(), "a");
    }
}
