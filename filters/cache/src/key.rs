//! Cache keys: the primary key (method class, authority, path, normalised query, configured
//! headers) and the `Vary` secondary key.

use switchyard_core::hash::{stable_hash64, stable_hash64_seeded};
use switchyard_core::request::{key_text, percent_decode};
use switchyard_core::routing::RoutingRecord;
use switchyard_core::RequestView;

/// Which query parameters are part of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    All,
    None,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

/// How to build keys, from the configuration.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub query: QueryKey,
    /// Lower-case request header names whose values are part of the key.
    pub headers: Vec<String>,
    /// Where the router writes the routed cluster: the routing record
    /// (`switchyard_core::routing`) is part of every key.
    pub cluster_header: String,
    /// Seeds the key hash, which picks an entry's bucket in the store: a random value per
    /// Envoy process (kept in shared data), so nobody can craft URLs that land in the bucket of
    /// a hot entry and evict it.
    pub seed: u64,
}

/// A primary cache key: the full string (compared on read, so hash collisions never produce a
/// false hit) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    pub text: String,
    pub hash: u64,
    /// Hash of authority + path + full query, used to invalidate every key of a URI.
    pub uri_hash: u64,
}

/// `authority` lower-cased (host names are case-insensitive). A port stays: the key is the
/// authority as it is forwarded, so `example.com:80` and `example.com` never share an entry
/// that the upstream might have answered differently.
pub fn normalise_authority(authority: &str) -> String {
    authority.to_ascii_lowercase()
}

/// The part of a primary key before the path: method class, scheme and authority.
pub fn key_origin(scheme: &str, authority: &str) -> String {
    let scheme = if scheme.is_empty() { "http" } else { scheme };
    // Built by hand: this runs on every request, and `format!` is a visible share of it.
    let mut origin = String::with_capacity(64 + scheme.len() + authority.len());
    origin.push_str("GET\n");
    let from = origin.len();
    origin.push_str(scheme);
    origin.push_str("://");
    origin.push_str(authority);
    if let Some(lower) = origin.get_mut(from..) {
        lower.make_ascii_lowercase();
    }
    origin.push('\n');
    origin
}

/// Hash of a URI for invalidation: authority and path only, so an unsafe request to
/// `/items/1?x=1` invalidates every cached query variant of `/items/1`.
pub fn uri_hash(authority: &str, path: &str) -> u64 {
    let mut s = normalise_authority(authority);
    s.push('\n');
    s.push_str(path);
    stable_hash64(s.as_bytes())
}

fn normalised_query(query: Option<&str>, spec: &QueryKey) -> String {
    let Some(q) = query else {
        return String::new();
    };
    if *spec == QueryKey::None {
        return String::new();
    }
    let mut pairs: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = percent_decode(p.split_once('=').map_or(*p, |(k, _)| k), true);
            match spec {
                QueryKey::All => true,
                QueryKey::None => false,
                QueryKey::Include(names) => names.contains(&name),
                QueryKey::Exclude(names) => !names.contains(&name),
            }
        })
        .collect();
    // Sorted so parameter order does not split the cache; the sort is stable for repeats.
    pairs.sort_unstable();
    pairs.join("&")
}

/// Starts the key line of the routing record. `@` is not a header-name character, so no
/// `key.headers` line can look like it.
const ROUTED_MARK: &str = "@";

/// A key text without its routing line: the same URL's entries across clusters and routes
/// share it (purges by URL remove every routed variant).
pub fn without_routing(text: &str) -> String {
    text.split('\n')
        .filter(|line| !line.starts_with(ROUTED_MARK))
        .collect::<Vec<_>>()
        .join("\n")
}

impl KeySpec {
    /// The primary key of a request. GET and HEAD share a key ("method class"), so a HEAD is
    /// answered from a stored GET.
    pub fn key(&self, req: &RequestView) -> CacheKey {
        let authority = req.authority();
        let mut text = key_origin(req.scheme(), authority);
        // What decides the response: where the router sent the request (cluster and route),
        // then the path and authority as the router left them.
        let record = RoutingRecord::read(req, &self.cluster_header);
        if let Some(cluster) = &record.cluster {
            text.push_str(ROUTED_MARK);
            text.push_str(cluster);
            text.push('/');
            text.push_str(record.route.as_deref().unwrap_or(""));
            text.push('\n');
        }
        text.push_str(req.path());
        let q = normalised_query(req.query_string(), &self.query);
        if !q.is_empty() {
            text.push('?');
            text.push_str(&q);
        }
        for h in &self.headers {
            text.push('\n');
            text.push_str(h);
            // An absent header is not an empty one; bytes that are not text are keyed in hex.
            match req.header_joined(h) {
                Some(v) => {
                    text.push(':');
                    text.push_str(&key_text(&v));
                }
                None => text.push('!'),
            }
        }
        CacheKey {
            hash: stable_hash64_seeded(text.as_bytes(), self.seed),
            uri_hash: uri_hash(authority, req.path()),
            text,
        }
    }
}

/// The header names a response varies on, lower-cased, sorted and de-duplicated (`*` is
/// excluded: such responses are never stored).
pub fn vary_names(vary_values: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = vary_values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "*")
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The secondary key: the request's values of the varied headers, whitespace-normalised so
/// `gzip,br` and `gzip, br` match (RFC 9111 §4.1). An absent header differs from an empty one.
pub fn vary_values(names: &[String], req: &RequestView) -> Vec<(String, Option<String>)> {
    names
        .iter()
        .map(|n| {
            let v = req.header_joined(n).map(|v| {
                let v = key_text(&v);
                v.split(',').map(|p| p.trim()).collect::<Vec<_>>().join(",")
            });
            (n.clone(), v)
        })
        .collect()
}

/// Hash of a secondary key, to tell variants of one primary key apart in the index.
pub fn variant_hash(values: &[(String, Option<String>)]) -> u64 {
    let mut s = String::new();
    for (n, v) in values {
        s.push_str(n);
        match v {
            Some(v) => {
                s.push('=');
                s.push_str(v);
            }
            None => s.push('!'),
        }
        s.push('\n');
    }
    stable_hash64(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::routing::CLUSTER_HEADER;

    fn spec(query: QueryKey, headers: &[&str]) -> KeySpec {
        KeySpec {
            query,
            headers: headers.iter().map(|h| h.to_string()).collect(),
            cluster_header: CLUSTER_HEADER.to_string(),
            seed: 0,
        }
    }
    fn get(path: &str) -> RequestView {
        RequestView::new("GET", path).with_authority("Example.com")
    }

    #[test]
    fn query_order_does_not_split_the_cache() {
        let s = spec(QueryKey::All, &[]);
        assert_eq!(s.key(&get("/a?b=2&a=1")), s.key(&get("/a?a=1&b=2")));
        assert_ne!(s.key(&get("/a?a=1")), s.key(&get("/a?a=2")));
        assert_ne!(s.key(&get("/a")), s.key(&get("/b")));
    }

    #[test]
    fn query_none_include_exclude() {
        let none = spec(QueryKey::None, &[]);
        assert_eq!(none.key(&get("/a?x=1")), none.key(&get("/a")));
        let inc = spec(QueryKey::Include(vec!["id".into()]), &[]);
        assert_eq!(
            inc.key(&get("/a?id=1&utm=x")),
            inc.key(&get("/a?utm=y&id=1"))
        );
        assert_ne!(inc.key(&get("/a?id=1")), inc.key(&get("/a?id=2")));
        let exc = spec(QueryKey::Exclude(vec!["utm_source".into()]), &[]);
        assert_eq!(
            exc.key(&get("/a?utm_source=x&p=1")),
            exc.key(&get("/a?p=1"))
        );
        assert_ne!(exc.key(&get("/a?p=1")), exc.key(&get("/a?p=2")));
    }

    #[test]
    fn method_class_authority_and_headers() {
        let s = spec(QueryKey::All, &["x-tenant"]);
        let head = RequestView::new("HEAD", "/a").with_authority("example.com");
        assert_eq!(s.key(&get("/a")).text, s.key(&head).text);
        // The authority as forwarded: an explicit default port is another key.
        let port = RequestView::new("GET", "/a").with_authority("example.com:80");
        assert_ne!(s.key(&get("/a")), s.key(&port));
        // The scheme is part of the key.
        let https = get("/a").with_header(":scheme", "https");
        assert_ne!(s.key(&get("/a")), s.key(&https));
        // An absent key header is not an empty one.
        let empty = get("/a").with_header("x-tenant", "");
        assert_ne!(s.key(&get("/a")), s.key(&empty));
        // Bytes that are not UTF-8 key stably and apart from their UTF-8 look-alike.
        let latin1 = get("/a").with_header_bytes("x-tenant", b"caf\xe9");
        let utf8 = get("/a").with_header("x-tenant", "café");
        assert_ne!(s.key(&latin1), s.key(&utf8));
        assert_eq!(
            s.key(&latin1),
            s.key(&get("/a").with_header_bytes("x-tenant", b"caf\xe9"))
        );
        let other_host = RequestView::new("GET", "/a").with_authority("other.com");
        assert_ne!(s.key(&get("/a")), s.key(&other_host));
        let t1 = get("/a").with_header("x-tenant", "1");
        let t2 = get("/a").with_header("x-tenant", "2");
        assert_ne!(s.key(&t1), s.key(&t2));
        // Query variants of one path share the invalidation hash.
        assert_eq!(s.key(&get("/a?x=1")).uri_hash, s.key(&get("/a")).uri_hash);
    }

    #[test]
    fn the_routing_record_is_part_of_the_key() {
        use switchyard_core::routing::ROUTE_HEADER;
        let s = spec(QueryKey::All, &[]);
        let routed = |cluster: &str, route: &str| {
            get("/api/x")
                .with_header(CLUSTER_HEADER, cluster)
                .with_header(ROUTE_HEADER, route)
        };
        // A canary (another cluster) and another route to the same cluster are other keys.
        assert_ne!(
            s.key(&routed("api-v1", "api")),
            s.key(&routed("api-v2", "api"))
        );
        assert_ne!(
            s.key(&routed("api-v1", "api")),
            s.key(&routed("api-v1", "beta"))
        );
        assert_eq!(
            s.key(&routed("api-v1", "api")),
            s.key(&routed("api-v1", "api"))
        );
        assert_ne!(s.key(&routed("api-v1", "api")), s.key(&get("/api/x")));
        assert_eq!(
            without_routing(&s.key(&routed("api-v2", "canary")).text),
            s.key(&get("/api/x")).text
        );
        // The invalidation hash is the URI's: an unsafe request invalidates every variant.
        assert_eq!(
            s.key(&routed("api-v1", "api")).uri_hash,
            s.key(&get("/api/x")).uri_hash
        );
    }

    #[test]
    fn the_key_hash_depends_on_the_process_seed() {
        let mut a = spec(QueryKey::All, &[]);
        let mut b = a.clone();
        a.seed = 1;
        b.seed = 2;
        let (ka, kb) = (a.key(&get("/x")), b.key(&get("/x")));
        assert_eq!(ka.text, kb.text);
        assert_ne!(
            ka.hash, kb.hash,
            "bucket placement is not predictable across processes"
        );
        assert_eq!(ka.uri_hash, kb.uri_hash);
    }

    #[test]
    fn vary_secondary_key() {
        let names = vary_names(&["Accept-Encoding, accept-language", "accept-encoding"]);
        assert_eq!(names, vec!["accept-encoding", "accept-language"]);
        assert!(vary_names(&["*"]).is_empty());
        let a = get("/").with_header("accept-encoding", "gzip,br");
        let b = get("/").with_header("accept-encoding", "gzip, br");
        let c = get("/").with_header("accept-encoding", "identity");
        let d = get("/");
        let e = get("/").with_header("accept-encoding", "");
        let h = |r: &RequestView| variant_hash(&vary_values(&names, r));
        assert_eq!(h(&a), h(&b));
        assert_ne!(h(&a), h(&c));
        assert_ne!(h(&d), h(&e));
    }
}
