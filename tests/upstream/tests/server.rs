//! The upstream server seen from a client: echo, chosen responses, conditional requests,
//! the store, counting, and stop/restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use switchyard_harness::{Connection, Request};
use switchyard_upstream::{http_date, Jitter, LatencyProfile, Upstream};

fn up(id: &str) -> Upstream {
    Upstream::start(id).unwrap()
}

fn get(up: &Upstream, path: &str) -> Request {
    Request::new(up.addr(), "GET", path)
}

#[test]
fn echoes_the_request_as_json_with_its_id() {
    let up = up("u7");
    let resp = Request::new(up.addr(), "POST", "/a/b?x=1&y=2")
        .header("x-one", "1")
        .header("x-rep", "a")
        .header("x-rep", "b")
        .body("hello")
        .send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-upstream-id"), Some("u7"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let echo = resp.json();
    assert_eq!(echo["upstream"], "u7");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["path"], "/a/b");
    assert_eq!(echo["query"], "x=1&y=2");
    assert_eq!(echo["headers"]["x-one"], "1");
    assert_eq!(echo["headers"]["x-rep"], "a, b");
    assert_eq!(echo["body_len"], 5);

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].query.as_deref(), Some("x=1&y=2"));
    assert_eq!(seen[0].header_all("x-rep"), vec!["a", "b"]);
    assert_eq!(seen[0].body, b"hello");
}

#[test]
fn query_parameters_choose_status_headers_and_size() {
    let up = up("u1");
    let resp = get(
        &up,
        "/c?status=503&header=Cache-Control:max-age%3D60&header=Set-Cookie:a=1&header=Set-Cookie:b=2&size=100",
    )
    .send();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("cache-control"), Some("max-age=60"));
    assert_eq!(resp.header_all("set-cookie"), vec!["a=1", "b=2"]);
    assert_eq!(resp.body.len(), 100);
    assert!(resp.text().starts_with("abcdefghijklmnopqrstuvwxyzabc"));
    assert_eq!(resp.header("x-upstream-id"), Some("u1"));
}

#[test]
fn echo_headers_choose_the_response_like_query_parameters() {
    let up = up("u1");
    let resp = get(&up, "/h?header=X-From-Query:q")
        .header("x-echo-status", "404")
        .header("x-echo-header", "Vary: Accept")
        .header("x-echo-header", "Content-Type: text/html")
        .send();
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("vary"), Some("Accept"));
    assert_eq!(resp.header("x-from-query"), Some("q"));
    assert_eq!(resp.header_all("content-type"), vec!["text/html"]);
    // Query parameters win over headers.
    let resp = get(&up, "/h?status=202")
        .header("x-echo-status", "500")
        .send();
    assert_eq!(resp.status, 202);
}

#[test]
fn chunked_responses_arrive_complete() {
    let up = up("u1");
    let resp = get(&up, "/big?size=10000&chunked=1").send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.body.len(), 10000);
    assert_eq!(resp.body[9999], b'a' + (9999 % 26) as u8);
    // Without size the chunked body is the JSON echo.
    assert_eq!(get(&up, "/j?chunked=1").send().json()["path"], "/j");
}

#[test]
fn delay_holds_the_response_back() {
    let up = up("u1");
    let started = Instant::now();
    let resp = get(&up, "/slow?delay=300ms").send();
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    get(&up, "/slow").header("x-echo-delay", "150").send();
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn etag_and_if_none_match_answer_304_without_body() {
    let up = up("u1");
    let resp = get(&up, "/e?etag=v1&header=Cache-Control:max-age%3D60").send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    let resp = get(&up, "/e?etag=v1&header=Cache-Control:max-age%3D60")
        .header("if-none-match", "\"v0\", W/\"v1\"")
        .send();
    assert_eq!(resp.status, 304);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(resp.header("cache-control"), Some("max-age=60"));
    let resp = get(&up, "/e?etag=v2")
        .header("if-none-match", "\"v1\"")
        .send();
    assert_eq!(resp.status, 200);
    // 304s are served requests: counted and recorded.
    assert_eq!(up.count_path("/e"), 3);
    assert_eq!(
        up.requests()[1].header("if-none-match"),
        Some("\"v0\", W/\"v1\"")
    );
}

#[test]
fn last_modified_and_if_modified_since() {
    let up = up("u1");
    let now = SystemTime::now();
    let lm = http_date(now - Duration::from_secs(3600));
    let path = format!(
        "/m?last_modified={}",
        lm.replace(' ', "%20").replace(',', "%2C")
    );
    let resp = get(&up, &path).send();
    assert_eq!(resp.header("last-modified"), Some(lm.as_str()));
    let fresh = get(&up, &path).header("if-modified-since", &lm).send();
    assert_eq!(fresh.status, 304);
    let newer = get(&up, &path)
        .header("if-modified-since", http_date(now))
        .send();
    assert_eq!(newer.status, 304);
    let older = get(&up, &path)
        .header(
            "if-modified-since",
            http_date(now - Duration::from_secs(7200)),
        )
        .send();
    assert_eq!(older.status, 200);
}

#[test]
fn store_serves_objects_with_strong_etags_and_is_not_counted() {
    let up = up("u1");
    assert_eq!(get(&up, "/__store/routes").send().status, 404);
    let put = Request::new(up.addr(), "PUT", "/__store/routes")
        .header("content-type", "application/json")
        .body(r#"{"v":1}"#)
        .send();
    assert_eq!(put.status, 200);
    let resp = get(&up, "/__store/routes").send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), r#"{"v":1}"#);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let etag = resp.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let again = get(&up, "/__store/routes")
        .header("if-none-match", &etag)
        .send();
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // New content, new ETag; the old one no longer matches.
    up.store_put("routes", "application/json", r#"{"v":2}"#);
    let changed = get(&up, "/__store/routes")
        .header("if-none-match", &etag)
        .send();
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag").unwrap(), etag);

    assert_eq!(up.store_fetches("routes"), 4);
    assert_eq!(up.count(), 0);
    assert!(up.requests().is_empty());
}

#[test]
fn count_and_reset_endpoints() {
    let up = up("u1");
    get(&up, "/a").send();
    get(&up, "/a?x=1").send();
    get(&up, "/b").send();
    assert_eq!(get(&up, "/__health").send().status, 200);
    let count = get(&up, "/__count").send().json();
    assert_eq!(count["total"], 3);
    assert_eq!(count["paths"]["/a"], 2);
    assert_eq!(count["paths"]["/b"], 1);
    assert_eq!(up.count(), 3);
    assert_eq!(up.count_path("/a"), 2);

    assert_eq!(
        Request::new(up.addr(), "POST", "/__reset").send().status,
        200
    );
    assert_eq!(up.count(), 0);
    assert_eq!(get(&up, "/__count").send().json()["total"], 0);
    get(&up, "/c").send();
    up.reset();
    assert_eq!(up.count_path("/c"), 0);
}

#[test]
fn reset_parameter_drops_the_connection_without_an_answer() {
    let up = up("u1");
    let result = get(&up, "/r?reset=1").try_send();
    assert!(
        result.is_err(),
        "expected a dropped connection, got {result:?}"
    );
    assert_eq!(up.count_path("/r"), 1);
}

#[test]
fn stop_closes_listener_and_open_connections_and_restart_reuses_the_port() {
    let up = up("u1");
    let port = up.port();
    let mut conn = Connection::open(up.addr()).unwrap();
    let req = get(&up, "/k");
    assert_eq!(conn.send(&req).unwrap().status, 200);

    // A request in flight when the server stops fails too.
    let slow = std::thread::spawn({
        let addr = up.addr();
        move || Request::new(addr, "GET", "/slow?delay=10s").try_send()
    });
    assert!(switchyard_harness::eventually(
        Duration::from_secs(5),
        || up.count_path("/slow") == 1
    ));
    up.stop();
    assert!(!up.is_running());
    assert!(
        conn.send(&req).is_err(),
        "kept-alive connection must be closed"
    );
    assert!(slow.join().unwrap().is_err(), "in-flight request must fail");
    assert!(
        TcpStream::connect(up.addr()).is_err(),
        "listener must be closed"
    );

    up.restart().unwrap();
    assert_eq!(up.port(), port);
    let resp = get(&up, "/k").send();
    assert_eq!(resp.status, 200);
    // Counts survive a restart.
    assert_eq!(up.count_path("/k"), 2);
}

#[test]
fn binary_prints_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-upstream"))
        .args(["--id", "bin1", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = (|| {
        let addr = line
            .strip_prefix("LISTENING ")
            .ok_or(format!("unexpected first line {line:?}"))?
            .trim()
            .parse()
            .map_err(|e| format!("bad address in {line:?}: {e}"))?;
        let resp = Request::new(addr, "GET", "/x").send();
        Ok::<_, String>(resp)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let resp = result.unwrap();
    assert_eq!(resp.header("x-upstream-id"), Some("bin1"));
}

#[test]
fn latency_profile_delays_every_request_and_is_changed_at_run_time() {
    let up = up("u1");
    assert!(up.latency().is_zero());
    up.set_latency(LatencyProfile {
        base: Duration::from_millis(40),
        jitter: Jitter::Uniform(Duration::from_millis(10)),
        factor: 1.0,
    });
    let timed = |path: &str| {
        let started = Instant::now();
        let resp = get(&up, path).send();
        (resp, started.elapsed())
    };
    let (resp, took) = timed("/a");
    assert_eq!(resp.status, 200);
    assert!(took >= Duration::from_millis(40), "{took:?}");
    // The request's own delay comes on top.
    let (_, took) = timed("/a?delay=100ms");
    assert!(took >= Duration::from_millis(140), "{took:?}");

    // Control endpoints never wait, and /__latency reports the profile.
    let (resp, took) = timed("/__latency");
    assert!(took < Duration::from_millis(40), "{took:?}");
    let profile = resp.json();
    assert_eq!(profile["base_ms"], 40.0);
    assert_eq!(profile["jitter"], "uniform:10ms");
    assert_eq!(profile["factor"], 1.0);

    // factor=10: the same host ten times slower, without a restart; factor=1 restores it.
    let resp = get(&up, "/__latency?factor=10").send();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["factor"], 10.0);
    assert_eq!(up.latency().factor, 10.0);
    let (_, took) = timed("/a");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    get(&up, "/__latency?factor=1").send();
    let (_, took) = timed("/a");
    assert!(
        took >= Duration::from_millis(40) && took < Duration::from_millis(300),
        "{took:?}"
    );

    // base and jitter change at run time too; a bad parameter changes nothing.
    let resp = get(&up, "/__latency?base=0&jitter=exp:1ms").send();
    assert_eq!(resp.json()["jitter"], "exp:1ms");
    assert_eq!(up.latency().base, Duration::ZERO);
    for bad in [
        "factor=fast",
        "jitter=normal:1ms",
        "speed=2",
        "factor=2&base=x",
    ] {
        let resp = get(&up, &format!("/__latency?{bad}")).send();
        assert_eq!(resp.status, 400, "{bad}");
    }
    assert_eq!(up.latency().factor, 1.0);
    // Only ordinary requests are counted.
    assert_eq!(up.count_path("/a"), 4);
    assert_eq!(up.count_path("/__latency"), 0);
}

#[test]
fn binary_takes_a_latency_profile() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-upstream"))
        .args([
            "--id",
            "slowbin",
            "--listen",
            "127.0.0.1:0",
            "--latency",
            "30ms",
            "--jitter",
            "exp:1ms",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let result = (|| {
        let addr: std::net::SocketAddr = line
            .strip_prefix("LISTENING ")
            .ok_or(format!("unexpected first line {line:?}"))?
            .trim()
            .parse()
            .map_err(|e| format!("bad address in {line:?}: {e}"))?;
        let profile = Request::new(addr, "GET", "/__latency").send().json();
        let started = Instant::now();
        let resp = Request::new(addr, "GET", "/x").send();
        Ok::<_, String>((profile, resp.status, started.elapsed()))
    })();
    let _ = child.kill();
    let _ = child.wait();
    let (profile, status, took) = result.unwrap();
    assert_eq!(profile["base_ms"], 30.0);
    assert_eq!(profile["jitter"], "exp:1ms");
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(30), "{took:?}");
    let bad = Command::new(env!("CARGO_BIN_EXE_switchyard-upstream"))
        .args(["--jitter", "normal:1ms"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(bad.code(), Some(2));
}
