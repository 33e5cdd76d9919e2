//! A proxy-independent view of a request, built once per request by a filter's glue code.

use std::cell::OnceCell;
use std::net::IpAddr;

/// The parts of a request the match and key languages look at. Header names are stored
/// lower-case, values as received; the query string is decoded once.
#[derive(Debug, Clone, Default)]
pub struct RequestView {
    method: String,
    raw_path: String,
    path_len: usize,
    authority: String,
    scheme: String,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    source: OnceCell<Option<IpAddr>>,
    /// Fetches the downstream address the first time a matcher or key needs it: in Envoy that
    /// is a property host call (~1.5 µs), wasted on the many configurations that never use it.
    source_fetch: Option<fn() -> Option<String>>,
}

impl RequestView {
    /// A request with method and `:path` (which may carry a query string).
    pub fn new(method: &str, path: &str) -> Self {
        let mut r = RequestView {
            method: method.to_string(),
            ..Default::default()
        };
        r.set_path(path);
        r
    }

    /// Builds a view from an HTTP/2-style header list (`:method`, `:path`, `:authority`,
    /// `:scheme` and regular headers) and the downstream address (`"1.2.3.4:5678"`, `"[::1]:80"`
    /// or a bare IP), as Envoy exposes them.
    pub fn from_headers(headers: Vec<(String, String)>, source_address: Option<&str>) -> Self {
        let r = Self::from_header_list(headers);
        r.source
            .get_or_init(|| source_address.and_then(parse_address_ip));
        r
    }

    /// Like [`from_headers`](Self::from_headers), but the downstream address is fetched only
    /// when something asks for it, at most once.
    pub fn from_headers_lazy(
        headers: Vec<(String, String)>,
        source_address: fn() -> Option<String>,
    ) -> Self {
        let mut r = Self::from_header_list(headers);
        r.source_fetch = Some(source_address);
        r
    }

    fn from_header_list(headers: Vec<(String, String)>) -> Self {
        let mut r = RequestView::default();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                ":method" => r.method = value,
                ":path" => r.set_path(&value),
                ":authority" => r.authority = value,
                ":scheme" => r.scheme = value,
                _ => {
                    if name == "host" && r.authority.is_empty() {
                        r.authority = value.clone();
                    }
                    r.headers.push((name, value));
                }
            }
        }
        r
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if name == ":authority" || (name == "host" && self.authority.is_empty()) {
            self.authority = value.to_string();
        }
        if !name.starts_with(':') {
            self.headers.push((name, value.to_string()));
        }
        self
    }

    pub fn with_authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }

    pub fn with_source(mut self, address: &str) -> Self {
        self.source = OnceCell::from(parse_address_ip(address));
        self
    }

    fn set_path(&mut self, path: &str) {
        self.raw_path = path.to_string();
        self.path_len = path.find('?').unwrap_or(path.len());
        self.query = parse_query(self.query_string().unwrap_or(""));
    }

    pub fn method(&self) -> &str {
        &self.method
    }
    /// The path without the query string.
    pub fn path(&self) -> &str {
        &self.raw_path[..self.path_len]
    }
    /// `:path` as received, with the query string.
    pub fn raw_path(&self) -> &str {
        &self.raw_path
    }
    /// The query string without `?`, if the path has one.
    pub fn query_string(&self) -> Option<&str> {
        self.raw_path
            .get(self.path_len + 1..)
            .filter(|_| self.path_len < self.raw_path.len())
    }
    /// Decoded query parameters in order (repeated names kept).
    pub fn query_params(&self) -> &[(String, String)] {
        &self.query
    }
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn authority(&self) -> &str {
        &self.authority
    }
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
    /// All regular headers (lower-case names) in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    /// The first value of a header (`name` must be lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// All values of a header joined with `,` as HTTP defines for repeated fields.
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let mut values = self.header_values(name);
        let first = values.next()?;
        let mut out = first.to_string();
        for v in values {
            out.push(',');
            out.push_str(v);
        }
        Some(out)
    }
    /// A cookie's value from any `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header_values("cookie")
            .flat_map(|h| h.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"'))
            })
    }
    /// The downstream (peer) address of the connection.
    pub fn source_ip(&self) -> Option<IpAddr> {
        *self.source.get_or_init(|| {
            self.source_fetch
                .and_then(|fetch| fetch())
                .as_deref()
                .and_then(parse_address_ip)
        })
    }

    /// The client address: with `trusted_hops == 0` the downstream address; otherwise the
    /// `trusted_hops`-th entry from the right of `X-Forwarded-For` (the address the outermost
    /// trusted proxy saw). Entries to the left of it are client-supplied and never used. If the
    /// header has fewer entries than `trusted_hops` (the request did not pass through every
    /// trusted proxy), or the entry is not an IP, the downstream address is used.
    pub fn client_ip(&self, trusted_hops: u32) -> Option<IpAddr> {
        if trusted_hops == 0 {
            return self.source_ip();
        }
        let xff = self.header_joined("x-forwarded-for");
        let entries: Vec<&str> = xff
            .as_deref()
            .map(|x| {
                x.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let n = trusted_hops as usize;
        if entries.len() >= n {
            if let Some(ip) = parse_address_ip(entries[entries.len() - n]) {
                return Some(ip);
            }
        }
        self.source_ip()
    }
}

/// Parses `"1.2.3.4"`, `"1.2.3.4:80"`, `"::1"`, `"[::1]:80"`.
pub fn parse_address_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().and_then(|h| h.parse().ok());
    }
    None
}

/// Decodes an `application/x-www-form-urlencoded` query string.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Percent-decodes `s` (and `+` as space when `plus_as_space`). Invalid escapes are kept as is;
/// invalid UTF-8 is replaced.
pub fn percent_decode(s: &str, plus_as_space: bool) -> String {
    if !(s.contains('%') || (plus_as_space && s.contains('+'))) {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestView {
        RequestView::from_headers(
            vec![
                (":method".into(), "GET".into()),
                (
                    ":path".into(),
                    "/a/b?x=1&y=hello%20world&x=2&flag&e=".into(),
                ),
                (":authority".into(), "api.example.com".into()),
                ("X-Forwarded-For".into(), "6.6.6.6, 1.1.1.1".into()),
                ("x-forwarded-for".into(), "2.2.2.2".into()),
                ("Cookie".into(), "a=1; session=abc".into()),
                ("cookie".into(), "b=2".into()),
            ],
            Some("10.0.0.9:5555"),
        )
    }

    #[test]
    fn path_and_query() {
        let r = req();
        assert_eq!(r.method(), "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query_param("x"), Some("1"));
        assert_eq!(r.query_param("y"), Some("hello world"));
        assert_eq!(r.query_param("flag"), Some(""));
        assert_eq!(r.query_param("e"), Some(""));
        assert_eq!(r.query_param("z"), None);
        assert_eq!(RequestView::new("GET", "/p").query_string(), None);
        assert_eq!(RequestView::new("GET", "/p?").query_string(), Some(""));
    }

    #[test]
    fn headers_cookies_authority() {
        let r = req();
        assert_eq!(r.authority(), "api.example.com");
        assert_eq!(r.header("x-forwarded-for"), Some("6.6.6.6, 1.1.1.1"));
        assert_eq!(
            r.header_joined("x-forwarded-for").unwrap(),
            "6.6.6.6, 1.1.1.1,2.2.2.2"
        );
        assert_eq!(r.cookie("session"), Some("abc"));
        assert_eq!(r.cookie("b"), Some("2"));
        assert_eq!(r.cookie("c"), None);
    }

    #[test]
    fn client_ip_trusted_hops() {
        let r = req();
        assert_eq!(r.client_ip(0), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(r.client_ip(1), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(r.client_ip(2), Some("1.1.1.1".parse().unwrap()));
        assert_eq!(r.client_ip(3), Some("6.6.6.6".parse().unwrap()));
        // Fewer entries than trusted hops: not every proxy was passed, use the peer.
        assert_eq!(r.client_ip(4), Some("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn the_lazy_source_address_is_fetched_once_and_only_when_asked() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static FETCHES: AtomicUsize = AtomicUsize::new(0);
        fn fetch() -> Option<String> {
            FETCHES.fetch_add(1, Ordering::SeqCst);
            Some("10.1.2.3:5555".to_string())
        }
        let headers = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".to_string(), "/a".to_string()),
            ("x-forwarded-for".to_string(), "9.9.9.9".to_string()),
        ];
        let r = RequestView::from_headers_lazy(headers, fetch);
        assert_eq!(r.path(), "/a");
        // Only X-Forwarded-For is needed here.
        assert_eq!(r.client_ip(1), Some("9.9.9.9".parse().unwrap()));
        assert_eq!(FETCHES.load(Ordering::SeqCst), 0);
        assert_eq!(r.client_ip(0), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(r.source_ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(FETCHES.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address_ip("[::1]:80"), Some("::1".parse().unwrap()));
        assert_eq!(parse_address_ip("::1"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_address_ip("1.2.3.4:9"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(parse_address_ip("nope"), None);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb+c", true), "a/b c");
        assert_eq!(percent_decode("a%2Fb+c", false), "a/b+c");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}
