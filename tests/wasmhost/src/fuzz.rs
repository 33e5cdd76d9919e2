//! Reproducible generators for fuzzing filter modules: requests and upstream responses with the
//! bytes Envoy's codecs let through, plus a hand-picked corpus of worst cases.
//!
//! Every generated case is a pure function of `(seed, index)` ([`generate`]), so a failure is
//! replayed from the two numbers alone. Values are generated as bytes (HTTP field values are
//! bytes, not text) and the host carries them as bytes: a lone `\xE9` reaches the module as the
//! single byte `E9`.

use std::fmt;

/// splitmix64: turns any seed (0 included) into a well-mixed 64-bit state.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One step of xorshift64* (the filters' generator, `switchyard_core::rng`, which this host
/// does not depend on): the fuzz's cases and the host's `random_get` draw from it.
pub fn xorshift_star(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// xorshift64* seeded through splitmix64: small, fast, deterministic on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(splitmix64(seed) | 1)
    }
    /// The generator of case `index` under `seed` (independent of every other case).
    pub fn for_case(seed: u64, index: u64) -> Self {
        Rng::new(splitmix64(seed) ^ splitmix64(index.wrapping_add(0x5157_4e59)))
    }
    pub fn next_u64(&mut self) -> u64 {
        xorshift_star(&mut self.0)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// A length: mostly short, sometimes long, rarely huge (up to `max`).
    pub fn len(&mut self, max: usize) -> usize {
        match self.below(20) {
            0..=11 => self.range(0, 16.min(max)),
            12..=17 => self.range(0, 256.min(max)),
            18 => self.range(0, 4096.min(max)),
            _ => self.range(0, max),
        }
    }
}

/// A header or trailer: name (a lower-case token) and value bytes.
pub type Field = (String, Vec<u8>);

/// What the upstream answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<Field>,
    pub body: Vec<u8>,
    pub trailers: Vec<Field>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: b"ok".to_vec(),
            trailers: Vec::new(),
        }
    }
}

/// One fuzz case: a request, the upstream's answer, virtual time before it, and the replies
/// to any callouts the filter makes meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Where it came from: `corpus:<name>` or `seed=<s> case=<i>`.
    pub label: String,
    pub method: Vec<u8>,
    pub path: Vec<u8>,
    pub authority: Vec<u8>,
    pub headers: Vec<Field>,
    pub body: Option<Vec<u8>>,
    pub trailers: Vec<Field>,
    /// `source.address` property (the downstream peer).
    pub source: String,
    pub response: Response,
    /// Virtual time to let pass before the request.
    pub wait_ms: u64,
    /// Replies to callouts the filter dispatches (used in order, then cycled).
    pub callout_replies: Vec<Response>,
    /// How many times the request is sent in a row (so limits bite and entries are hit).
    pub repeat: u32,
}

impl Case {
    pub fn get(label: &str, path: impl AsRef<[u8]>) -> Self {
        Case {
            label: label.to_string(),
            method: b"GET".to_vec(),
            path: path.as_ref().to_vec(),
            authority: b"example.com".to_vec(),
            headers: Vec::new(),
            body: None,
            trailers: Vec::new(),
            source: "10.1.2.3:40000".to_string(),
            response: Response::default(),
            wait_ms: 0,
            callout_replies: Vec::new(),
            repeat: 1,
        }
    }
    pub fn repeat(mut self, n: u32) -> Self {
        self.repeat = n;
        self
    }
    pub fn header(mut self, name: &str, value: &[u8]) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }
    pub fn method(mut self, method: &[u8]) -> Self {
        self.method = method.to_vec();
        self
    }
    pub fn upstream_header(mut self, name: &str, value: &[u8]) -> Self {
        self.response
            .headers
            .push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }
    pub fn upstream_status(mut self, status: u32) -> Self {
        self.response.status = status;
        self
    }
    /// Total size of the request's header bytes (for reports).
    pub fn header_bytes(&self) -> usize {
        self.headers.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// Shows bytes as text with `\xNN` escapes, long values abbreviated (`...<N bytes>...`).
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOW: usize = 96;
        let write = |f: &mut fmt::Formatter<'_>, bytes: &[u8]| -> fmt::Result {
            for &b in bytes {
                match b {
                    b'"' | b'\\' => write!(f, "\\{}", b as char)?,
                    0x20..=0x7e => write!(f, "{}", b as char)?,
                    b'\t' => write!(f, "\\t")?,
                    _ => write!(f, "\\x{b:02X}")?,
                }
            }
            Ok(())
        };
        f.write_str("\"")?;
        if self.0.len() <= SHOW * 2 {
            write(f, self.0)?;
        } else {
            write(f, &self.0[..SHOW])?;
            write!(f, "...<{} bytes>...", self.0.len() - 2 * SHOW)?;
            write(f, &self.0[self.0.len() - SHOW..])?;
        }
        f.write_str("\"")
    }
}

fn fields(f: &mut fmt::Formatter<'_>, what: &str, list: &[Field]) -> fmt::Result {
    const SHOW: usize = 40;
    for (i, (k, v)) in list.iter().enumerate() {
        if i == SHOW && list.len() > SHOW + 5 {
            writeln!(f, "    ... {} more {what}", list.len() - SHOW - 5)?;
        }
        if i >= SHOW && i < list.len() - 5 {
            continue;
        }
        writeln!(f, "    {what} {k}: {}", Escaped(v))?;
    }
    Ok(())
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "case {}:", self.label)?;
        writeln!(
            f,
            "  {} {} (authority {}, source {}, after {} ms, sent {} times)",
            Escaped(&self.method),
            Escaped(&self.path),
            Escaped(&self.authority),
            self.source,
            self.wait_ms,
            self.repeat
        )?;
        writeln!(
            f,
            "  {} request headers ({} bytes)",
            self.headers.len(),
            self.header_bytes()
        )?;
        fields(f, "header", &self.headers)?;
        if let Some(body) = &self.body {
            writeln!(f, "  request body {}", Escaped(body))?;
        }
        fields(f, "trailer", &self.trailers)?;
        writeln!(f, "  upstream answers {}", self.response.status)?;
        fields(f, "upstream header", &self.response.headers)?;
        writeln!(f, "    upstream body {}", Escaped(&self.response.body))?;
        fields(f, "upstream trailer", &self.response.trailers)?;
        for (i, r) in self.callout_replies.iter().enumerate() {
            writeln!(
                f,
                "  callout reply {i}: {} body {}",
                r.status,
                Escaped(&r.body)
            )?;
        }
        Ok(())
    }
}

// ---- generation ------------------------------------------------------------------------------

const TCHAR_EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";

/// A header name: a valid token, lower case (Envoy stores names lower case).
fn token(rng: &mut Rng) -> String {
    let max = if rng.one_in(20) { 200 } else { 24 };
    let len = rng.range(1, max);
    (0..len)
        .map(|_| match rng.below(10) {
            0 => *rng.pick(TCHAR_EXTRA) as char,
            1 => (b'0' + rng.below(10) as u8) as char,
            _ => (b'a' + rng.below(26) as u8) as char,
        })
        .collect()
}

/// One byte Envoy allows in a field value: VCHAR, SP, HTAB or obs-text (never NUL, CR, LF).
fn value_byte(rng: &mut Rng) -> u8 {
    match rng.below(10) {
        0..=5 => rng.range(0x21, 0x7e) as u8,
        6 => *rng.pick(b" \t"),
        _ => rng.range(0x80, 0xff) as u8,
    }
}

fn random_value(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.len(max);
    let mut v: Vec<u8> = (0..len).map(|_| value_byte(rng)).collect();
    // Sometimes valid multi-byte UTF-8 obs-text, sometimes lone bytes (the interesting cases).
    if rng.one_in(4) {
        let at = rng.below(v.len() + 1);
        let insert: &[u8] = rng.pick::<&[u8]>(OBS_TEXT);
        v.splice(at..at, insert.iter().copied());
    }
    v
}

const OBS_TEXT: &[&[u8]] = &[
    b"\xe9",
    b"\xff",
    b"\x80",
    b"caf\xc3\xa9",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x92\xa9",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xef\xbb\xbf",
    b"\xc3\xa9\xc3\xa9\xc3\xa9",
];

/// Malformed and edge-case values for headers the filters parse.
fn special_value(rng: &mut Rng, name: &str) -> Vec<u8> {
    let options: &[&[u8]] = match name {
        "date" | "if-modified-since" | "last-modified" | "expires" => &[
            b"Thu, 01 Jan 2026 00:00:00 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
            b"Mon, 32 Foo 99999 25:61:61 GMT",
            b"0",
            b"-1",
            b"",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"Thu, 01 Jan 2026 00:00:00 \xe9",
            b"Thu,\xc3\xa9 01 Jan 2026",
            b"Thu, 01 Jan -2026 00:00:00 GMT",
            b"Thu, 1 Jan 2026 0:0:0 GMT",
            b"18446744073709551616",
        ],
        "if-none-match" | "etag" => &[
            b"\"v1\"",
            b"W/\"v1\"",
            b"*",
            b"\"a\", W/\"b\", \"c",
            b"\"",
            b"W/",
            b"\"\xe9\"",
            b",,,,",
            b"\"v1\" \"v2\"",
            b"W/\"\"",
        ],
        "cache-control" => &[
            b"max-age=60",
            b"max-age=",
            b"max-age=-1",
            b"max-age=99999999999999999999999",
            b"max-age=\"60\"",
            b"max-age=\"",
            b"no-cache=\"set-cookie, x",
            b"s-maxage=1, max-age=2, max-age=3",
            b"private, public, no-store, no-transform, must-revalidate",
            b"stale-while-revalidate=abc, stale-if-error=1e9",
            b"max-age=60\xe9",
            b"\xe9=\xe9",
            b"=,=,=",
            b",",
            b"max-age=0, stale-while-revalidate=4294967296",
            b"only-if-cached, max-stale, min-fresh=-5",
        ],
        "range" => &[
            b"bytes=0-0",
            b"bytes=-1",
            b"bytes=5-1",
            b"bytes=0-18446744073709551616",
            b"bytes=",
            b"bytes=a-b",
            b"items=0-1",
            b"bytes=0-1,2-3,4-5",
            b"bytes=\xe9-",
        ],
        "cookie" => &[
            b"session=abc",
            b"session=",
            b"=session",
            b"session",
            b";;;;",
            b"a=1; session=\xe9\xe9; b=2",
            b"session=caf\xc3\xa9",
            b"session=\"quoted; value\"",
            b"session=1; session=2",
        ],
        "x-forwarded-for" => &[
            b"1.2.3.4",
            b"1.2.3.4, 5.6.7.8",
            b"::1",
            b"[::1]:80",
            b"999.999.999.999",
            b", , ,",
            b"",
            b"unknown",
            b"1.2.3.4\xe9",
            b"fe80::1%eth0",
        ],
        "authorization" => &[
            b"Bearer abc",
            b"Basic \xe9\xe9\xe9",
            b"Bearer",
            b"Basic =====",
            b"Digest username=\"\xc3\xa9\"",
        ],
        "x-user-id" => &[
            b"caf\xe9",
            b"caf\xc3\xa9",
            b"\xff\xfe",
            b"",
            b" ",
            b"alice",
            b"\x80",
        ],
        "age" | "content-length" => &[
            b"0",
            b"-1",
            b"18446744073709551616",
            b"1, 2",
            b"abc",
            b"",
            b"1.5",
            b"\xe9",
            b" 5 ",
        ],
        "vary" => &[
            b"*",
            b"accept-encoding",
            b"x-user-id, cookie",
            b",,",
            b"\xe9",
            b"Accept-Encoding, *",
        ],
        _ => &[b""],
    };
    let mut v = rng.pick(options).to_vec();
    if rng.one_in(4) {
        mutate(rng, &mut v);
    }
    v
}

/// Flips, inserts or deletes a few bytes, staying within the allowed value bytes.
fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        match rng.below(3) {
            0 if !v.is_empty() => {
                let at = rng.below(v.len());
                v[at] = value_byte(rng);
            }
            1 => {
                let at = rng.below(v.len() + 1);
                v.insert(at, value_byte(rng));
            }
            _ if !v.is_empty() => {
                let at = rng.below(v.len());
                v.remove(at);
            }
            _ => {}
        }
    }
}

const REQUEST_SPECIAL: &[&str] = &[
    "date",
    "if-modified-since",
    "if-none-match",
    "cache-control",
    "range",
    "cookie",
    "x-forwarded-for",
    "authorization",
    "x-user-id",
];

/// Headers the representative configurations look at (so fuzzed values reach their code).
const CONFIG_HEADERS: &[(&str, &[u8])] = &[
    ("x-canary", b"always"),
    ("x-purge-token", b"change-me"),
    ("x-debug", b"1"),
    ("x-tenant", b"t1"),
    ("accept-encoding", b"gzip"),
    ("x-switchyard-cluster", b"api-v2"),
    ("x-upstream-host", b"127.0.0.1:8081"),
    ("x-hash-explain", b"1"),
    ("pragma", b"no-cache"),
];

const RESPONSE_SPECIAL: &[&str] = &[
    "cache-control",
    "expires",
    "age",
    "vary",
    "etag",
    "last-modified",
    "content-length",
    "date",
];

const METHODS: &[&[u8]] = &[
    b"GET",
    b"GET",
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"get",
    b"PURGE",
    b"purge",
    b"CONNECT",
    b"TRACE",
    b"M-SEARCH",
    b"G\xc3\x89T",
];

const PATH_PIECES: &[&[u8]] = &[
    b"/",
    b"//",
    b"/../",
    b"/./",
    b"%2F",
    b"%2f",
    b"%",
    b"%%",
    b"%zz",
    b"%E9",
    b"\xe9",
    b"caf\xc3\xa9",
    b"/api/",
    b"/users/",
    b"/docs/v1/",
    b"/search",
    b"/healthz",
    b"/limited",
    b"/admin",
    b"{id}",
    b";",
    b"#frag",
    b"?",
    b"&",
    b"=",
    b"a",
    b"item",
];

const QUERY_PIECES: &[&[u8]] = &[
    b"a=1",
    b"a=",
    b"=1",
    b"a",
    b"&&",
    b"a=1&a=2",
    b"%",
    b"%zz",
    b"x=\xe9",
    b"q=caf%C3%A9",
    b"?",
    b"=",
    b"b=2;c=3",
];

fn path(rng: &mut Rng) -> Vec<u8> {
    let mut p = if rng.one_in(10) {
        Vec::new()
    } else {
        b"/".to_vec()
    };
    for _ in 0..rng.range(0, 6) {
        if rng.one_in(3) {
            p.extend((0..rng.range(1, 12)).map(|_| rng.range(0x21, 0x7e) as u8));
        } else {
            p.extend_from_slice(rng.pick::<&[u8]>(PATH_PIECES));
        }
    }
    if rng.one_in(30) {
        let n = rng.range(1000, 70_000);
        p.extend((0..n).map(|i| b'a' + (i % 26) as u8));
    }
    if rng.one_in(2) {
        p.push(b'?');
        for i in 0..rng.range(0, 5) {
            if i > 0 {
                p.push(b'&');
            }
            p.extend_from_slice(rng.pick::<&[u8]>(QUERY_PIECES));
        }
    }
    p
}

fn fields_of(rng: &mut Rng, special: &[&str], max_count: usize) -> Vec<Field> {
    let count = match rng.below(30) {
        0 => rng.range(100, 160),
        1..=3 => rng.range(20, 60),
        _ => rng.range(0, max_count),
    };
    let mut out: Vec<Field> = Vec::with_capacity(count);
    for _ in 0..count {
        let field = match rng.below(10) {
            0..=3 => {
                let name = *rng.pick(special);
                (name.to_string(), special_value(rng, name))
            }
            4 => {
                let (name, value) = *rng.pick(CONFIG_HEADERS);
                let mut v = value.to_vec();
                if rng.one_in(2) {
                    mutate(rng, &mut v);
                }
                (name.to_string(), v)
            }
            5 if !out.is_empty() => {
                // A repeated header.
                let (name, _) = out[rng.below(out.len())].clone();
                (name, random_value(rng, 64))
            }
            _ => (token(rng), random_value(rng, 65_536)),
        };
        out.push(field);
    }
    if rng.one_in(25) {
        // One 64 KiB value.
        let name = rng.pick(special).to_string();
        let v = (0..65_536).map(|_| value_byte(rng)).collect();
        out.push((name, v));
    }
    out
}

fn body(rng: &mut Rng) -> Vec<u8> {
    let len = rng.len(70_000);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn status(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0..=4 => *rng.pick(&[200, 200, 200, 203, 204, 206, 301, 304, 404, 410]),
        5 => *rng.pick(&[100, 101, 103, 199, 500, 502, 503, 504, 599]),
        _ => rng.range(100, 599) as u32,
    }
}

fn response(rng: &mut Rng) -> Response {
    let mut headers = fields_of(rng, RESPONSE_SPECIAL, 12);
    if rng.one_in(3) {
        headers.push(("set-cookie".to_string(), random_value(rng, 64)));
    }
    Response {
        status: status(rng),
        headers,
        body: body(rng),
        trailers: if rng.one_in(6) {
            fields_of(rng, RESPONSE_SPECIAL, 4)
        } else {
            Vec::new()
        },
    }
}

/// Bodies for callout replies (route tables, revalidations): JSON-ish, sometimes valid.
fn callout_reply(rng: &mut Rng) -> Response {
    let mut r = response(rng);
    if rng.one_in(2) {
        let bodies: &[&[u8]] = &[
            br#"{"routes": [], "default": {"cluster": "web"}}"#,
            br#"{"routes": [{"name": "x", "match": {"path": {"prefix": "/"}}, "action": {"cluster": "web"}}]}"#,
            br#"{"routes": [{"name": "broken"}]}"#,
            b"{",
            b"null",
            b"[]",
            b"{\"routes\": \"\xe9\"}",
            b"",
        ];
        r.body = rng.pick(bodies).to_vec();
    }
    r
}

/// Case `index` of the stream seeded `seed`.
pub fn generate(seed: u64, index: u64) -> Case {
    let rng = &mut Rng::for_case(seed, index);
    let method = if rng.one_in(25) {
        (0..rng.range(20, 300))
            .map(|_| b'A' + rng.below(26) as u8)
            .collect()
    } else {
        rng.pick(METHODS).to_vec()
    };
    let authority: Vec<u8> = match rng.below(8) {
        0 => b"".to_vec(),
        1 => b"EXAMPLE.com:8080".to_vec(),
        2 => random_value(rng, 300),
        _ => b"example.com".to_vec(),
    };
    let source = match rng.below(6) {
        0 => "[::1]:1234".to_string(),
        1 => "garbage".to_string(),
        2 => String::new(),
        _ => format!(
            "10.0.{}.{}:{}",
            rng.below(4),
            rng.below(256),
            rng.range(1, 65535)
        ),
    };
    let has_body = rng.one_in(3);
    Case {
        label: format!("seed={seed} case={index}"),
        method,
        path: path(rng),
        authority,
        headers: fields_of(rng, REQUEST_SPECIAL, 16),
        body: has_body.then(|| body(rng)),
        trailers: if rng.one_in(8) {
            fields_of(rng, REQUEST_SPECIAL, 4)
        } else {
            Vec::new()
        },
        source,
        response: response(rng),
        wait_ms: match rng.below(10) {
            0..=5 => 0,
            6..=8 => rng.range(1, 2_000) as u64,
            _ => rng.range(2_000, 400_000) as u64,
        },
        callout_replies: (0..rng.range(0, 3)).map(|_| callout_reply(rng)).collect(),
        repeat: if rng.one_in(5) {
            rng.range(2, 8) as u32
        } else {
            1
        },
    }
}

/// Hand-picked worst cases, run before any generated one.
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    // Each obs-text value in each header a filter reads, as a lone byte and as UTF-8.
    for name in [
        "x-user-id",
        "cookie",
        "x-forwarded-for",
        "authorization",
        "if-none-match",
        "if-modified-since",
        "cache-control",
        "date",
        "range",
        "x-canary",
        "x-purge-token",
        "accept-encoding",
        "x-tenant",
    ] {
        let value: &[u8] = if name == "cookie" {
            b"session=caf\xe9"
        } else {
            b"caf\xe9"
        };
        cases.push(
            Case::get(&format!("corpus:{name}: caf\\xE9"), "/api/x")
                .header(name, value)
                .repeat(8),
        );
        let value: &[u8] = if name == "cookie" {
            b"session=caf\xc3\xa9"
        } else {
            b"caf\xc3\xa9"
        };
        cases.push(
            Case::get(&format!("corpus:{name}: café (UTF-8)"), "/api/x")
                .header(name, value)
                .repeat(8),
        );
    }
    cases.push(
        Case::get("corpus:x-user-id: lone \\xFF on /limited", "/limited")
            .header("x-user-id", b"\xff"),
    );
    cases.push(
        Case::get("corpus:obs-text in the path", b"/caf\xc3\xa9/\xe9?q=\xe9")
            .header("x-user-id", b"u"),
    );
    cases.push(Case::get(
        "corpus:obs-text users template",
        b"/users/caf\xe9",
    ));
    cases.push(
        Case::get("corpus:PURGE with obs-text token", "/item")
            .method(b"PURGE")
            .header("x-purge-token", b"change-m\xe9"),
    );
    cases.push(
        Case::get("corpus:PURGE with the token", "/item")
            .method(b"PURGE")
            .header("x-purge-token", b"change-me"),
    );
    cases.push(Case::get("corpus:lower-case get", "/").method(b"get"));
    cases.push(Case::get("corpus:long method", "/").method(&[b'X'; 4096]));
    cases.push(Case::get("corpus:empty method and path", "").method(b""));
    for p in [
        "//",
        "/../../etc/passwd",
        "/%2F%2f",
        "/%",
        "/%zz",
        "?",
        "/?&&=&=",
        "*",
        "/docs/v1/",
        "/docs/v1/%",
    ] {
        cases.push(Case::get(&format!("corpus:path {p}"), p));
    }
    let long_path = format!("/{}", "a/".repeat(40_000));
    cases.push(Case::get("corpus:80 KB path", &long_path));
    let big: Vec<u8> = (0..65_536).map(|i| b'a' + (i % 26) as u8).collect();
    for name in [
        "x-user-id",
        "cookie",
        "x-forwarded-for",
        "cache-control",
        "if-none-match",
    ] {
        cases.push(Case::get(&format!("corpus:64 KiB {name}"), "/api/x").header(name, &big));
    }
    let mut big_obs = big.clone();
    big_obs.push(0xe9);
    cases.push(
        Case::get("corpus:64 KiB x-user-id ending in \\xE9", "/api/x")
            .header("x-user-id", &big_obs),
    );
    let mut many = Case::get("corpus:150 headers", "/api/x");
    for i in 0..150 {
        many = many.header(&format!("x-h{i}"), format!("v{i}").as_bytes());
    }
    cases.push(many);
    let mut repeated = Case::get("corpus:150 repeated x-user-id and cookie", "/api/x");
    for i in 0..75 {
        repeated = repeated
            .header("x-user-id", format!("u{i}").as_bytes())
            .header("cookie", format!("session=s{i}; a=é").as_bytes());
    }
    cases.push(repeated);
    // Upstream responses the cache and the hashring parse.
    for (name, value) in [
        ("cache-control", &b"max-age=60\xe9"[..]),
        ("cache-control", b"max-age=99999999999999999999"),
        ("cache-control", b"max-age=\"60"),
        ("expires", b"caf\xe9"),
        ("age", b"\xe9"),
        ("age", b"18446744073709551616"),
        ("vary", b"x-user-id, \xe9"),
        ("vary", b"*"),
        ("etag", b"\"\xe9\""),
        ("last-modified", b"caf\xe9"),
        ("content-length", b"99999999999999999999"),
        ("date", b"\xe9"),
    ] {
        cases.push(
            Case::get(
                &format!("corpus:upstream {name}: {}", Escaped(value)),
                "/cacheable",
            )
            .header("x-user-id", b"caf\xe9")
            .upstream_header(name, value)
            .upstream_header("cache-control", b"max-age=60"),
        );
    }
    for status in [100, 101, 199, 204, 304, 500, 503, 599] {
        cases.push(
            Case::get(&format!("corpus:upstream status {status}"), "/cacheable")
                .upstream_status(status)
                .upstream_header("cache-control", b"max-age=60"),
        );
    }
    let mut stale = Case::get("corpus:revalidate after expiry", "/cacheable")
        .header("if-none-match", b"\"\xe9\"")
        .header("if-modified-since", b"\xe9")
        .upstream_header("cache-control", b"max-age=1, stale-while-revalidate=600");
    stale.wait_ms = 5_000;
    stale.callout_replies = vec![Response {
        status: 304,
        headers: vec![("etag".to_string(), b"\"\xe9\"".to_vec())],
        body: Vec::new(),
        trailers: Vec::new(),
    }];
    cases.push(stale);
    let mut reload = Case::get("corpus:route table reload with obs-text", "/api/x");
    reload.wait_ms = 6_000;
    reload.callout_replies = vec![Response {
        status: 200,
        headers: vec![("etag".to_string(), b"\"\xe9\"".to_vec())],
        body: b"{\"routes\": [], \"default\": {\"cluster\": \"caf\xe9\"}}".to_vec(),
        trailers: vec![("x-t".to_string(), b"\xe9".to_vec())],
    }];
    cases.push(reload);
    cases.push(Case {
        trailers: vec![("x-user-id".to_string(), b"caf\xe9".to_vec())],
        body: Some(b"\xe9\xff\x00body".to_vec()),
        response: Response {
            trailers: vec![("grpc-message".to_string(), b"caf\xe9".to_vec())],
            ..Response::default()
        },
        ..Case::get("corpus:obs-text trailers both ways", "/api/x").method(b"POST")
    });
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_a_function_of_seed_and_index() {
        assert_eq!(generate(7, 3), generate(7, 3));
        assert_ne!(generate(7, 3), generate(7, 4));
        assert_ne!(generate(7, 3), generate(8, 3));
    }

    #[test]
    fn generated_values_hold_only_bytes_envoy_allows() {
        for i in 0..200 {
            let case = generate(1, i);
            for (k, v) in case.headers.iter().chain(&case.response.headers) {
                assert!(!k.is_empty());
                assert!(k.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || TCHAR_EXTRA.contains(&b)));
                assert!(!v.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')), "{k}");
            }
        }
    }

    #[test]
    fn escaped_shows_bytes() {
        assert_eq!(Escaped(b"caf\xe9\"").to_string(), "\"caf\\xE9\\\"\"");
    }

    #[test]
    fn the_corpus_sends_lone_obs_text_bytes() {
        let lone = corpus()
            .iter()
            .flat_map(|c| c.headers.iter())
            .filter(|(_, v)| std::str::from_utf8(v).is_err())
            .count();
        assert!(lone >= 13, "{lone}");
    }
}
