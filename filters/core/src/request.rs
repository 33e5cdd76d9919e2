//! A proxy-independent, byte-safe view of a request, built once per request by a filter's glue.
//!
//! Header values are bytes as the codec let them through: RFC 9110 §5.5 allows obs-text
//! (0x80–0xFF) and HTAB in field values, so nothing here assumes UTF-8. The header map is read
//! from the host lazily, on the first question that needs it, and at most once; a configuration
//! that looks at no header costs no header read.
//!
//! How non-UTF-8 bytes behave (documented in docs/matching.md, "Bytes in headers"):
//! - exact / prefix / suffix / contains tests compare bytes;
//! - a regex sees the value as UTF-8 when it is valid UTF-8, otherwise each byte as the Latin-1
//!   character of that code ([`text`]);
//! - a key built from a value ([`key_text`]) is the value itself when it is printable UTF-8,
//!   otherwise `\u{1e}` followed by the bytes in hex: stable, and distinct for distinct bytes;
//! - `:path` and `:authority` bytes that are not UTF-8 are percent-encoded (`%E9`), which is the
//!   URI form of the same octets.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::net::IpAddr;
use std::rc::Rc;

/// Fetches the whole request header map (pseudo-headers included) as bytes.
pub type HeaderFetch = Box<dyn Fn() -> Vec<(Vec<u8>, Vec<u8>)>>;

/// Where a lazy view's parts come from: the header map, parsed on first use, or parts already
/// parsed for another view of the same request (`crate::stages`).
enum Fetch {
    Headers(HeaderFetch),
    Parsed(Box<dyn Fn() -> Rc<Parts>>),
}

impl Fetch {
    fn parts(&self) -> Rc<Parts> {
        match self {
            Fetch::Headers(f) => Rc::new(Parts::from_list(f())),
            Fetch::Parsed(f) => f(),
        }
    }
}

/// The parts of a request the match and key languages look at.
#[derive(Debug, Clone, Default)]
pub(crate) struct Parts {
    method: String,
    raw_path: String,
    path_len: usize,
    authority: String,
    scheme: String,
    /// Regular headers: lower-case names, values as bytes, in order.
    headers: Vec<(String, Vec<u8>)>,
    query: Vec<(String, String)>,
}

/// See the module documentation.
#[derive(Default)]
pub struct RequestView {
    /// Shared, not copied: a clone of the view, and (in the suite) every stage's view of the
    /// same unedited request, hold the same parsed parts.
    parts: OnceCell<Rc<Parts>>,
    fetch: Option<Fetch>,
    source: OnceCell<Option<IpAddr>>,
    /// Fetches the downstream address the first time a matcher or key needs it: in Envoy that
    /// is a property host call (~2 µs), wasted on the many configurations that never use it.
    source_fetch: Option<fn() -> Option<String>>,
}

impl std::fmt::Debug for RequestView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("parts", &self.parts.get())
            .field("source", &self.source.get())
            .finish()
    }
}

impl Clone for RequestView {
    /// A clone is a snapshot: it holds the parts (read now if not yet read) and no fetchers.
    fn clone(&self) -> Self {
        RequestView {
            parts: OnceCell::from(Rc::clone(self.shared_parts())),
            fetch: None,
            source: OnceCell::from(self.source_ip()),
            source_fetch: None,
        }
    }
}

impl RequestView {
    /// A request with method and `:path` (which may carry a query string).
    pub fn new(method: &str, path: &str) -> Self {
        let mut p = Parts {
            method: method.to_string(),
            ..Default::default()
        };
        p.set_path(path);
        Self::from_parts(p)
    }

    fn from_parts(p: Parts) -> Self {
        RequestView {
            parts: OnceCell::from(Rc::new(p)),
            ..Default::default()
        }
    }

    /// Builds a view from an HTTP/2-style header list (`:method`, `:path`, `:authority`,
    /// `:scheme` and regular headers) and the downstream address (`"1.2.3.4:5678"`, `"[::1]:80"`
    /// or a bare IP), as Envoy exposes them.
    pub fn from_headers(headers: Vec<(String, String)>, source_address: Option<&str>) -> Self {
        let bytes = headers
            .into_iter()
            .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
            .collect();
        let r = Self::from_parts(Parts::from_list(bytes));
        r.source
            .get_or_init(|| source_address.and_then(parse_address_ip));
        r
    }

    /// Like [`from_headers`](Self::from_headers) with byte values.
    pub fn from_header_bytes(headers: Vec<(Vec<u8>, Vec<u8>)>, source: Option<&str>) -> Self {
        let r = Self::from_parts(Parts::from_list(headers));
        r.source.get_or_init(|| source.and_then(parse_address_ip));
        r
    }

    /// A view whose header map is fetched the first time something asks for a part of the
    /// request, and whose downstream address is fetched the first time a matcher or key needs
    /// it; each at most once.
    pub fn lazy(fetch: HeaderFetch, source_address: fn() -> Option<String>) -> Self {
        RequestView {
            parts: OnceCell::new(),
            fetch: Some(Fetch::Headers(fetch)),
            source: OnceCell::new(),
            source_fetch: Some(source_address),
        }
    }

    /// Whether the header map has been read (for tests of the lazy read).
    pub fn headers_read(&self) -> bool {
        self.parts.get().is_some()
    }

    /// A view whose parts are parsed once for several views: `parsed` returns them (parsing
    /// the header map the first time), and the downstream address is fetched as in
    /// [`lazy`](Self::lazy).
    pub(crate) fn lazy_parsed(
        parsed: Box<dyn Fn() -> Rc<Parts>>,
        source_address: fn() -> Option<String>,
    ) -> Self {
        RequestView {
            parts: OnceCell::new(),
            fetch: Some(Fetch::Parsed(parsed)),
            source: OnceCell::new(),
            source_fetch: Some(source_address),
        }
    }

    fn shared_parts(&self) -> &Rc<Parts> {
        self.parts.get_or_init(|| match &self.fetch {
            Some(f) => f.parts(),
            None => Rc::default(),
        })
    }

    fn parts(&self) -> &Parts {
        self.shared_parts()
    }

    /// Edits the parts (reading them first if a fetcher is set), for the builder methods.
    fn edit(mut self, f: impl FnOnce(&mut Parts)) -> Self {
        let shared = match self.parts.take() {
            Some(p) => p,
            None => match &self.fetch {
                Some(fetch) => fetch.parts(),
                None => Rc::default(),
            },
        };
        let mut p = Rc::unwrap_or_clone(shared);
        f(&mut p);
        self.parts = OnceCell::from(Rc::new(p));
        self
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.edit(|p| p.add(name.into(), value.into()))
    }

    pub fn with_header_bytes(self, name: &str, value: &[u8]) -> Self {
        self.edit(|p| p.add(name.into(), value.to_vec()))
    }

    pub fn with_authority(self, authority: &str) -> Self {
        self.edit(|p| p.authority = authority.to_string())
    }

    pub fn with_source(mut self, address: &str) -> Self {
        self.source = OnceCell::from(parse_address_ip(address));
        self
    }

    pub fn method(&self) -> &str {
        &self.parts().method
    }
    /// The path without the query string.
    pub fn path(&self) -> &str {
        let p = self.parts();
        p.raw_path.get(..p.path_len).unwrap_or(&p.raw_path)
    }
    /// `:path` as received (non-UTF-8 bytes percent-encoded), with the query string.
    pub fn raw_path(&self) -> &str {
        &self.parts().raw_path
    }
    /// The query string without `?`, if the path has one.
    pub fn query_string(&self) -> Option<&str> {
        let p = self.parts();
        p.raw_path
            .get(p.path_len + 1..)
            .filter(|_| p.path_len < p.raw_path.len())
    }
    /// Decoded query parameters in order (repeated names kept).
    pub fn query_params(&self) -> &[(String, String)] {
        &self.parts().query
    }
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.parts()
            .query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn authority(&self) -> &str {
        &self.parts().authority
    }
    pub fn scheme(&self) -> &str {
        &self.parts().scheme
    }
    /// All regular headers (lower-case names, byte values) in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.parts().headers
    }
    /// The first value of a header (`name` must be lower-case).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts()
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
    /// The first value of a header as text ([`text`]).
    pub fn header_text(&self, name: &str) -> Option<Cow<'_, str>> {
        self.header(name).map(text)
    }
    /// Every value of a header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.parts()
            .headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
    /// All values of a header joined with `,` as HTTP defines for repeated fields.
    pub fn header_joined(&self, name: &str) -> Option<Vec<u8>> {
        let mut values = self.header_values(name);
        let mut out = values.next()?.to_vec();
        for v in values {
            out.push(b',');
            out.extend_from_slice(v);
        }
        Some(out)
    }
    /// A cookie's value from any `Cookie` header.
    pub fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.header_values("cookie")
            .flat_map(|h| h.split(|b| *b == b';'))
            .find_map(|pair| {
                let eq = pair.iter().position(|b| *b == b'=')?;
                let (k, v) = (&pair[..eq], &pair[eq + 1..]);
                (trim(k) == name.as_bytes()).then(|| trim_quotes(trim(v)))
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
        let xff = self.header_joined("x-forwarded-for").unwrap_or_default();
        let entries: Vec<&[u8]> = xff
            .split(|b| *b == b',')
            .map(trim)
            .filter(|e| !e.is_empty())
            .collect();
        let n = trusted_hops as usize;
        if entries.len() >= n {
            let entry = std::str::from_utf8(entries[entries.len() - n]).ok();
            if let Some(ip) = entry.and_then(parse_address_ip) {
                return Some(ip);
            }
        }
        self.source_ip()
    }
}

impl Parts {
    pub(crate) fn from_list(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut p = Parts::default();
        p.headers.reserve(headers.len());
        for (name, value) in headers {
            p.add(name, value);
        }
        p
    }

    /// Takes one header, owned: Envoy's names are already lower-case UTF-8 and its values are
    /// kept as they are, so a regular header costs no copy.
    fn add(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let name = match String::from_utf8(name) {
            Ok(mut n) => {
                n.make_ascii_lowercase();
                n
            }
            Err(e) => String::from_utf8_lossy(e.as_bytes()).to_ascii_lowercase(),
        };
        match name.as_str() {
            ":method" => self.method = String::from_utf8_lossy(&value).into_owned(),
            ":path" => self.set_path(&uri_text(&value)),
            ":authority" => self.authority = uri_text(&value).into_owned(),
            ":scheme" => self.scheme = String::from_utf8_lossy(&value).into_owned(),
            _ if name.starts_with(':') => {}
            _ => {
                if name == "host" && self.authority.is_empty() {
                    self.authority = uri_text(&value).into_owned();
                }
                self.headers.push((name, value));
            }
        }
    }

    fn set_path(&mut self, path: &str) {
        self.raw_path = path.to_string();
        self.path_len = path.find('?').unwrap_or(path.len());
        let q = self
            .raw_path
            .get(self.path_len + 1..)
            .filter(|_| self.path_len < self.raw_path.len())
            .unwrap_or("");
        self.query = parse_query(q);
    }
}

/// A header value as text: itself when it is UTF-8, otherwise each byte read as the Latin-1
/// character of that code (lossless; the obs-text of RFC 9110 §5.5 historically was Latin-1).
pub fn text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(value.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Marks a key part that is shown in hex ([`key_text`]).
pub const HEX_KEY_MARK: char = '\u{1e}';

/// A header value as a key: itself when it is UTF-8 without control characters (other than
/// HTAB), otherwise [`HEX_KEY_MARK`] and the bytes in lower-case hex. Distinct byte strings
/// give distinct keys, and the same bytes always the same key.
pub fn key_text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\t') => Cow::Borrowed(s),
        _ => {
            let mut out = String::with_capacity(1 + value.len() * 2);
            out.push(HEX_KEY_MARK);
            for b in value {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
            Cow::Owned(out)
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `:path` / `:authority` bytes as a URI string: UTF-8 as is; otherwise every byte ≥ 0x80
/// percent-encoded, the URI form of those octets.
fn uri_text(value: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(value) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut out = String::with_capacity(value.len() * 3);
            for &b in value {
                if b < 0x80 {
                    out.push(char::from(b));
                } else {
                    out.push('%');
                    out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
                    out.push(char::from(HEX_UPPER[usize::from(b & 15)]));
                }
            }
            Cow::Owned(out)
        }
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

fn trim_quotes(b: &[u8]) -> &[u8] {
    let b = b.strip_prefix(b"\"").unwrap_or(b);
    b.strip_suffix(b"\"").unwrap_or(b)
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
        assert_eq!(r.header("x-forwarded-for"), Some(&b"6.6.6.6, 1.1.1.1"[..]));
        assert_eq!(
            r.header_joined("x-forwarded-for").unwrap(),
            b"6.6.6.6, 1.1.1.1,2.2.2.2"
        );
        assert_eq!(r.cookie("session"), Some(&b"abc"[..]));
        assert_eq!(r.cookie("b"), Some(&b"2"[..]));
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
        static HEADER_READS: AtomicUsize = AtomicUsize::new(0);
        let r = RequestView::lazy(
            Box::new(|| {
                HEADER_READS.fetch_add(1, Ordering::SeqCst);
                vec![
                    (b":method".to_vec(), b"GET".to_vec()),
                    (b":path".to_vec(), b"/a".to_vec()),
                    (b"x-forwarded-for".to_vec(), b"9.9.9.9".to_vec()),
                ]
            }),
            fetch,
        );
        assert!(!r.headers_read());
        assert_eq!(HEADER_READS.load(Ordering::SeqCst), 0);
        assert_eq!(r.path(), "/a");
        assert_eq!(r.method(), "GET");
        assert_eq!(HEADER_READS.load(Ordering::SeqCst), 1);
        // Only X-Forwarded-For is needed here.
        assert_eq!(r.client_ip(1), Some("9.9.9.9".parse().unwrap()));
        assert_eq!(FETCHES.load(Ordering::SeqCst), 0);
        assert_eq!(r.client_ip(0), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(r.source_ip(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(FETCHES.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn obs_text_values_are_bytes() {
        let r = RequestView::from_header_bytes(
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/caf\xe9?q=\xff".to_vec()),
                (b":authority".to_vec(), b"h\xe9st".to_vec()),
                (b"x-user-id".to_vec(), b"caf\xe9".to_vec()),
                (b"cookie".to_vec(), b"s=\xfc\xfd; t=1".to_vec()),
                (b"x-forwarded-for".to_vec(), b"\xff, 1.2.3.4".to_vec()),
            ],
            None,
        );
        assert_eq!(r.header("x-user-id"), Some(&b"caf\xe9"[..]));
        assert_eq!(r.header_text("x-user-id").unwrap(), "caf\u{e9}");
        assert_eq!(r.path(), "/caf%E9");
        assert_eq!(r.authority(), "h%E9st");
        assert_eq!(r.cookie("s"), Some(&b"\xfc\xfd"[..]));
        assert_eq!(r.client_ip(1), Some("1.2.3.4".parse().unwrap()));
        // The untrusted entry is not an IP: the peer (none here) is used.
        assert_eq!(r.client_ip(2), None);
    }

    #[test]
    fn key_text_is_stable_and_distinct() {
        assert_eq!(key_text(b"alice"), "alice");
        assert_eq!(key_text("café".as_bytes()), "café");
        let latin1 = key_text(b"caf\xe9");
        assert_eq!(latin1, "\u{1e}636166e9");
        assert_ne!(latin1, key_text("café".as_bytes()));
        assert_ne!(key_text(b"\x1e636166e9"), latin1);
        assert_eq!(key_text(b"caf\xe9"), latin1);
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
