//! A small HTTP/1.1 client on a plain `std::net::TcpStream`: requests go on the wire exactly as
//! built (header order, case and repeats kept), so tests control what Envoy sees.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Default per-request timeout (connect, each read and each write).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A request to send. Built with [`crate::Envoy::get`], [`crate::Envoy::request`] or
/// [`Request::new`].
///
/// Added automatically unless the test set them itself: `Host: <addr>`, `Connection: close`,
/// and `Content-Length` when a body is set (or for `POST`/`PUT`/`PATCH`).
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until .send()"]
pub struct Request {
    addr: SocketAddr,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

impl Request {
    pub fn new(addr: SocketAddr, method: &str, path: &str) -> Request {
        Request {
            addr,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds a header; calling it twice with the same name sends the header twice.
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Request {
        self.headers
            .push((name.to_string(), value.as_ref().to_string()));
        self
    }

    pub fn headers<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Request {
        for (k, v) in headers {
            self = self.header(k.as_ref(), v);
        }
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Request {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    /// The exact bytes [`Request::send`] writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode(true)
    }

    fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has_header("host") {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close && !self.has_header("connection") {
            head.push_str("Connection: close\r\n");
        }
        let needs_length =
            self.body.is_some() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if needs_length
            && !self.has_header("content-length")
            && !self.has_header("transfer-encoding")
        {
            let len = self.body.as_ref().map_or(0, Vec::len);
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }

    /// Sends the request on a new connection and reads the response; panics (failing the test)
    /// with the request line and the error if that fails. Use [`Request::try_send`] when a
    /// failure is the expected outcome.
    pub fn send(self) -> Response {
        let what = format!("{} {} to {}", self.method, self.path, self.addr);
        match self.try_send() {
            Ok(r) => r,
            Err(e) => panic!("HTTP request {what} failed: {e}"),
        }
    }

    /// Sends the request on a new connection (`Connection: close` unless set otherwise).
    pub fn try_send(self) -> io::Result<Response> {
        let stream = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            reader: BufReader::new(stream),
        };
        conn.roundtrip(&self, true)
    }
}

/// A kept-alive connection for several requests in a row (e.g. to test per-connection
/// behaviour). Requests sent through it do not get `Connection: close` added.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&addr, DEFAULT_TIMEOUT)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        stream.set_write_timeout(Some(DEFAULT_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `req` on this connection (its address is ignored) and reads the response.
    pub fn send(&mut self, req: &Request) -> io::Result<Response> {
        let stream = self.reader.get_ref();
        stream.set_read_timeout(Some(req.timeout))?;
        stream.set_write_timeout(Some(req.timeout))?;
        self.roundtrip(req, false)
    }

    fn roundtrip(&mut self, req: &Request, close: bool) -> io::Result<Response> {
        self.reader.get_mut().write_all(&req.encode(close))?;
        self.reader.get_mut().flush()?;
        read_response(&mut self.reader, &req.method)
    }
}

/// A response: status, headers in wire order (repeats kept), body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the status and body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            ),
        }
    }

    /// Shorthand for the `x-upstream-id` header the test upstream sets.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream-id")
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad("response head is not UTF-8"))
}

/// Reads one response; 1xx interim responses are skipped.
pub(crate) fn read_response(r: &mut impl BufRead, method: &str) -> io::Result<Response> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line: {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line: {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut resp = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header_all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = read_chunked(r)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| bad(format!("bad content-length {len:?}")))?;
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            resp.body = body;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(resp);
    }
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(r)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r)?;
        if !crlf.is_empty() {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: &str) -> io::Result<Response> {
        read_response(&mut BufReader::new(raw.as_bytes()), method)
    }

    #[test]
    fn parses_content_length_and_repeated_headers() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
            "GET",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
        assert_eq!(r.header_all("SET-COOKIE"), vec!["a=1", "b=2"]);
    }

    #[test]
    fn parses_chunked_and_skips_interim_responses() {
        let r = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
            "POST",
        )
        .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn head_and_304_have_no_body() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "HEAD").unwrap();
        assert!(r.body.is_empty());
        let r = parse("HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n", "GET").unwrap();
        assert_eq!(r.header("etag"), Some("\"a\""));
    }

    #[test]
    fn truncated_response_is_an_error() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "GET").is_err());
        assert!(parse("", "GET").is_err());
    }

    #[test]
    fn encodes_headers_exactly_with_defaults() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let raw = Request::new(addr, "POST", "/a?b=1")
            .header("X-A", "1")
            .header("x-a", "2")
            .body("hi")
            .to_bytes();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-A: 1\r\nx-a: 2\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        );
        let raw = Request::new(addr, "GET", "/")
            .header("host", "example.com")
            .to_bytes();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "GET / HTTP/1.1\r\nhost: example.com\r\nConnection: close\r\n\r\n"
        );
    }
}
