//! The routing record: what the router decided, for the filters after it in the chain.
//!
//! The chain order is ratelimit → router → cache → hashring → Envoy's router. The router
//! rewrites `:path` and `:authority` in place and writes two request headers; the cache and the
//! hashring read them from there instead of guessing:
//!
//! | header | value |
//! |---|---|
//! | `x-switchyard-cluster` (the router's `cluster_header`) | the cluster the request goes to |
//! | `x-switchyard-route-name` | the name of the matched route (`default` for the default action) |
//!
//! The router always overwrites both (or removes them when it answers locally), so a client
//! cannot forge the record when the router is in the chain. Without the router, nothing writes
//! them: strip them at the edge, or the cache and hashring act on what a client sent.

use crate::request::RequestView;

/// Default name of the header that carries the routed cluster (the router's `cluster_header`).
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// The header that carries the matched route's name.
pub const ROUTE_HEADER: &str = "x-switchyard-route-name";

/// The router's decision as later filters see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingRecord {
    /// The routed cluster; `None` when no router routed this request.
    pub cluster: Option<String>,
    /// The matched route's name.
    pub route: Option<String>,
}

impl RoutingRecord {
    /// Reads the record from the request (`cluster_header` lower-case). Values that are not
    /// UTF-8 or are empty count as absent: the router only writes validated names.
    pub fn read(req: &RequestView, cluster_header: &str) -> RoutingRecord {
        let text = |name: &str| {
            req.header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        RoutingRecord {
            cluster: text(cluster_header),
            route: text(ROUTE_HEADER),
        }
    }

    /// Whether a router routed this request.
    pub fn is_routed(&self) -> bool {
        self.cluster.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_record_and_ignores_empty_or_binary_values() {
        let r = RequestView::new("GET", "/")
            .with_header(CLUSTER_HEADER, "api-v1")
            .with_header(ROUTE_HEADER, "api");
        let rec = RoutingRecord::read(&r, CLUSTER_HEADER);
        assert_eq!(rec.cluster.as_deref(), Some("api-v1"));
        assert_eq!(rec.route.as_deref(), Some("api"));
        assert!(rec.is_routed());
        let none = RoutingRecord::read(&RequestView::new("GET", "/"), CLUSTER_HEADER);
        assert_eq!(none, RoutingRecord::default());
        let odd = RequestView::new("GET", "/")
            .with_header(CLUSTER_HEADER, "")
            .with_header_bytes(ROUTE_HEADER, b"\xff");
        assert_eq!(
            RoutingRecord::read(&odd, CLUSTER_HEADER),
            RoutingRecord::default()
        );
    }
}
