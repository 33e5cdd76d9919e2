//! The hyper service and the accept loop.

use crate::latency::{LatencyProfile, Random};
use crate::lock;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpSocket;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as it reached the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0` (h2c prior knowledge).
    pub version: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (no `?`), if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercase, repeats kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An object in the upstream's store (`/__store/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub content_type: String,
    pub body: Vec<u8>,
    /// Strong ETag, quoted: a hash of the content.
    pub etag: String,
}

#[derive(Default)]
struct Counters {
    total: u64,
    paths: BTreeMap<String, u64>,
    requests: Vec<RecordedRequest>,
    store_fetches: HashMap<String, u64>,
}

pub(crate) struct State {
    pub(crate) id: String,
    counters: Mutex<Counters>,
    store: Mutex<HashMap<String, StoredObject>>,
    /// Added to every ordinary request (`--latency`, `--jitter`, `/__latency`).
    latency: Mutex<LatencyProfile>,
    random: Random,
}

impl State {
    pub(crate) fn new(id: &str) -> State {
        State {
            id: id.to_string(),
            counters: Mutex::new(Counters::default()),
            store: Mutex::new(HashMap::new()),
            latency: Mutex::new(LatencyProfile::default()),
            // Each server its own jitter stream (the id and the start time).
            random: Random::new(
                xxhash_rust::xxh64::xxh64(id.as_bytes(), 0)
                    ^ SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            ),
        }
    }

    pub(crate) fn latency(&self) -> LatencyProfile {
        *lock(&self.latency)
    }

    pub(crate) fn set_latency(&self, profile: LatencyProfile) {
        *lock(&self.latency) = profile;
    }

    /// This request's share of the latency profile (zero without one).
    fn sample_latency(&self) -> Duration {
        let profile = self.latency();
        if profile.is_zero() {
            return Duration::ZERO;
        }
        profile.sample(self.random.next_f64())
    }

    pub(crate) fn count(&self) -> u64 {
        lock(&self.counters).total
    }

    pub(crate) fn count_path(&self, path: &str) -> u64 {
        lock(&self.counters).paths.get(path).copied().unwrap_or(0)
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.counters).requests.clone()
    }

    pub(crate) fn reset(&self) {
        *lock(&self.counters) = Counters::default();
    }

    pub(crate) fn store_put(&self, name: &str, content_type: &str, body: Vec<u8>) {
        let etag = format!("\"{:016x}\"", xxhash_rust::xxh64::xxh64(&body, 0));
        lock(&self.store).insert(
            name.to_string(),
            StoredObject {
                content_type: content_type.to_string(),
                body,
                etag,
            },
        );
    }

    pub(crate) fn store_delete(&self, name: &str) {
        lock(&self.store).remove(name);
    }

    pub(crate) fn store_get(&self, name: &str) -> Option<StoredObject> {
        lock(&self.store).get(name).cloned()
    }

    pub(crate) fn store_fetches(&self, name: &str) -> u64 {
        lock(&self.counters)
            .store_fetches
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn record(&self, req: RecordedRequest) {
        let mut c = lock(&self.counters);
        c.total += 1;
        *c.paths.entry(req.path.clone()).or_insert(0) += 1;
        c.requests.push(req);
    }

    fn count_store_fetch(&self, name: &str) {
        *lock(&self.counters)
            .store_fetches
            .entry(name.to_string())
            .or_insert(0) += 1;
    }
}

/// A running accept loop; [`Running::shutdown`] closes the listener and all connections.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    pub(crate) async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub(crate) async fn bind_and_serve(state: Arc<State>, addr: SocketAddr) -> io::Result<Running> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // restart() binds the same port while old connections may sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        // e.g. out of file descriptors: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { handle(state, req).await }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Reap finished connections so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        // Aborting drops each connection's socket: peers see the connection close.
        connections.shutdown().await;
    });
    Ok(Running { addr, stop, task })
}

/// Returned by the service to make hyper drop the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on request (reset=1)")
    }
}

impl std::error::Error for DropConnection {}

/// What the request asked for, from query parameters and `x-echo-*` headers.
#[derive(Default, Debug)]
struct Controls {
    status: Option<u16>,
    delay: Option<Duration>,
    size: Option<usize>,
    headers: Vec<(String, String)>,
    etag: Option<String>,
    last_modified: Option<String>,
    chunked: bool,
    /// Pause between chunks of a chunked body (default 5 ms).
    chunk_delay: Option<Duration>,
    reset: bool,
}

impl Controls {
    fn apply(&mut self, name: &str, value: &str) {
        match name {
            "status" => self.status = value.trim().parse().ok(),
            "delay" => self.delay = parse_delay(value),
            "size" => self.size = value.trim().parse().ok(),
            "header" => {
                if let Some((k, v)) = value.split_once(':') {
                    self.headers
                        .push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            "etag" => self.etag = Some(quote_etag(value.trim())),
            "last_modified" | "last-modified" => self.last_modified = Some(value.to_string()),
            "chunked" => self.chunked = truthy(value),
            "chunk_delay" => self.chunk_delay = parse_delay(value),
            "reset" => self.reset = truthy(value),
            _ => {}
        }
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim(), "1" | "true" | "yes" | "on")
}

fn parse_delay(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(ms) = v.parse::<u64>() {
        return Some(Duration::from_millis(ms));
    }
    switchyard_core::Duration::parse(v).map(|d| d.std())
}

/// `v1` → `"v1"`; already quoted or weak tags are kept as given.
fn quote_etag(v: &str) -> String {
    if v.starts_with('"') || v.starts_with("W/") {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}

/// Weak comparison (RFC 9110 §13.1.2): `W/"a"` matches `"a"`; `*` matches anything.
fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = strip(etag);
    header
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == ours)
}

fn not_modified_since(ims: &str, last_modified: &str) -> bool {
    match (
        httpdate::parse_http_date(ims.trim()),
        httpdate::parse_http_date(last_modified.trim()),
    ) {
        (Ok(ims), Ok(lm)) => ims >= lm,
        _ => false,
    }
}

fn header_str<'a>(req: &'a RecordedRequest, name: &str) -> Option<&'a str> {
    req.header(name)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(DropConnection),
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };

    if let Some(resp) = control(&state, &parts.method, &recorded, &body) {
        return Ok(resp);
    }
    state.record(recorded.clone());

    let mut controls = Controls::default();
    for (k, v) in &recorded.headers {
        if let Some(name) = k.strip_prefix("x-echo-") {
            controls.apply(name, v);
        }
    }
    if let Some(q) = &recorded.query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            controls.apply(&k, &v);
        }
    }

    // The server's latency profile, then the request's own delay.
    let wait = state.sample_latency() + controls.delay.unwrap_or(Duration::ZERO);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    if controls.reset {
        return Err(DropConnection);
    }

    let not_modified = match (&controls.etag, header_str(&recorded, "if-none-match")) {
        (Some(etag), Some(inm)) => if_none_match_matches(inm, etag),
        (_, Some(_)) => false,
        (_, None) => match (
            &controls.last_modified,
            header_str(&recorded, "if-modified-since"),
        ) {
            (Some(lm), Some(ims)) => not_modified_since(ims, lm),
            _ => false,
        },
    };
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        controls
            .status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK)
    };

    let (content_type, payload) = match controls.size {
        Some(n) => ("text/plain", pattern_body(n)),
        None => ("application/json", echo_json(&state.id, &recorded)),
    };
    let bodyless = status == StatusCode::NOT_MODIFIED
        || status == StatusCode::NO_CONTENT
        || status.is_informational()
        || parts.method == Method::HEAD;

    let mut resp = Response::new(if bodyless {
        Empty::new().boxed_unsync()
    } else if controls.chunked {
        chunked_body(
            payload,
            controls.chunk_delay.unwrap_or(Duration::from_millis(5)),
        )
    } else {
        Full::new(payload).boxed_unsync()
    });
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.id) {
        headers.insert("x-upstream-id", v);
    }
    if !bodyless {
        headers.insert("content-type", HeaderValue::from_static(content_type));
    }
    if let Some(etag) = controls
        .etag
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("etag", etag);
    }
    if let Some(lm) = controls
        .last_modified
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("last-modified", lm);
    }
    for (k, v) in &controls.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            continue;
        };
        // Framing is the server's business; a chosen content-type replaces the default.
        if name == hyper::header::CONTENT_LENGTH || name == hyper::header::TRANSFER_ENCODING {
            continue;
        }
        if name == hyper::header::CONTENT_TYPE {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }
    Ok(resp)
}

/// Serves the control endpoints; `None` for ordinary requests.
fn control(
    state: &State,
    method: &Method,
    req: &RecordedRequest,
    body: &Bytes,
) -> Option<Response<Body>> {
    let path = req.path.as_str();
    if !path.starts_with("/__") {
        return None;
    }
    let resp = if path == "/__health" {
        json_response(
            StatusCode::OK,
            serde_json::json!({"status": "ok", "upstream": state.id}),
        )
    } else if path == "/__count" {
        let c = lock(&state.counters);
        json_response(
            StatusCode::OK,
            serde_json::json!({"total": c.total, "paths": c.paths}),
        )
    } else if path == "/__reset" && method == Method::POST {
        state.reset();
        json_response(StatusCode::OK, serde_json::json!({"reset": true}))
    } else if path == "/__latency" {
        latency_endpoint(state, req.query.as_deref())
    } else if let Some(name) = path.strip_prefix("/__store/").filter(|n| !n.is_empty()) {
        store_endpoint(state, method, name, req, body)
    } else {
        return None;
    };
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(&state.id) {
        resp.headers_mut().insert("x-upstream-id", v);
    }
    Some(resp)
}

/// `/__latency[?factor=F&base=D&jitter=J]`: applies the parameters (all or none: a bad one
/// answers 400 and changes nothing) and answers the profile now in force.
fn latency_endpoint(state: &State, query: Option<&str>) -> Response<Body> {
    let mut profile = state.latency();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if let Err(e) = profile.apply(&k, &v) {
            return json_response(StatusCode::BAD_REQUEST, serde_json::json!({"error": e}));
        }
    }
    state.set_latency(profile);
    json_response(StatusCode::OK, profile.to_json())
}

fn store_endpoint(
    state: &State,
    method: &Method,
    name: &str,
    req: &RecordedRequest,
    body: &Bytes,
) -> Response<Body> {
    match *method {
        Method::PUT | Method::POST => {
            let content_type = req
                .header("content-type")
                .unwrap_or("application/octet-stream");
            state.store_put(name, content_type, body.to_vec());
            let etag = state.store_get(name).map(|o| o.etag).unwrap_or_default();
            json_response(
                StatusCode::OK,
                serde_json::json!({"stored": name, "etag": etag}),
            )
        }
        Method::DELETE => {
            state.store_delete(name);
            json_response(StatusCode::OK, serde_json::json!({"deleted": name}))
        }
        Method::GET | Method::HEAD => {
            state.count_store_fetch(name);
            let Some(obj) = state.store_get(name) else {
                return json_response(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "not found", "name": name}),
                );
            };
            let fresh = req
                .header("if-none-match")
                .is_some_and(|inm| if_none_match_matches(inm, &obj.etag));
            let mut resp = if fresh {
                let mut r = Response::new(Empty::new().boxed_unsync());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                let mut r = Response::new(Full::new(Bytes::from(obj.body)).boxed_unsync());
                if let Ok(ct) = HeaderValue::from_str(&obj.content_type) {
                    r.headers_mut().insert("content-type", ct);
                }
                r
            };
            if let Ok(etag) = HeaderValue::from_str(&obj.etag) {
                resp.headers_mut().insert("etag", etag);
            }
            resp
        }
        _ => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn echo_json(id: &str, req: &RecordedRequest) -> Bytes {
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in &req.headers {
        headers
            .entry(k.as_str())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    Bytes::from(
        serde_json::json!({
            "upstream": id,
            "method": req.method,
            "version": req.version,
            "path": req.path,
            "query": req.query,
            "headers": headers,
            "body_len": req.body.len(),
        })
        .to_string(),
    )
}

/// `n` bytes of `abc…xyz` repeated, so truncation or reordering is visible.
fn pattern_body(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}

/// Streams `payload` in four chunks with a short pause between them, so a proxy really sees a
/// body arriving in pieces.
fn chunked_body(payload: Bytes, pause: Duration) -> Body {
    const PIECES: usize = 4;
    let piece = payload.len().div_ceil(PIECES).max(1);
    let stream =
        futures_util::stream::unfold((payload, true), move |(mut rest, first)| async move {
            if rest.is_empty() {
                return None;
            }
            if !first {
                tokio::time::sleep(pause).await;
            }
            let chunk = rest.split_to(piece.min(rest.len()));
            Some((Ok::<_, Infallible>(Frame::data(chunk)), (rest, false)))
        });
    StreamBody::new(stream).boxed_unsync()
}

/// Current time as an HTTP date, for callers building `last_modified` values.
pub fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        assert!(if_none_match_matches("\"a\"", "\"a\""));
        assert!(if_none_match_matches("W/\"a\"", "\"a\""));
        assert!(if_none_match_matches("\"x\", \"a\"", "W/\"a\""));
        assert!(if_none_match_matches("*", "\"a\""));
        assert!(!if_none_match_matches("\"b\"", "\"a\""));
        assert!(!if_none_match_matches("a", "\"a\""));
    }

    #[test]
    fn etag_shorthand_is_quoted_once() {
        assert_eq!(quote_etag("v1"), "\"v1\"");
        assert_eq!(quote_etag("\"v1\""), "\"v1\"");
        assert_eq!(quote_etag("W/\"v1\""), "W/\"v1\"");
    }

    #[test]
    fn delays_accept_units_and_bare_milliseconds() {
        assert_eq!(parse_delay("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_delay("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_delay("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_delay("soon"), None);
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert!(not_modified_since(lm, lm));
        assert!(not_modified_since("Thu, 22 Oct 2015 07:28:00 GMT", lm));
        assert!(!not_modified_since("Tue, 20 Oct 2015 07:28:00 GMT", lm));
        assert!(!not_modified_since("garbage", lm));
    }

    #[test]
    fn pattern_body_has_exact_length() {
        let b = pattern_body(30);
        assert_eq!(b.len(), 30);
        assert_eq!(&b[..3], b"abc");
        assert_eq!(b[26], b'a');
    }
}
