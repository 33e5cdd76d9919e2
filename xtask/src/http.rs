//! Minimal HTTP/1.1 GET over a std `TcpStream`, for readiness checks (xtask has no HTTP client).

use crate::util::Result;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status code and body of `GET path` on `addr` (the connection is closed after one response).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let text = get_raw(addr, path)?;
    parse_response(&text)
}

/// Whether the response to `GET path` carries header `name` (any value), with its status.
pub fn get_has_header(addr: SocketAddr, path: &str, name: &str) -> Result<(u16, bool)> {
    let text = get_raw(addr, path)?;
    let (status, _) = parse_response(&text)?;
    let head = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(h, _)| h);
    let found = head.lines().skip(1).any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
    });
    Ok((status, found))
}

fn get_raw(addr: SocketAddr, path: &str) -> Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

fn parse_response(text: &str) -> Result<(u16, String)> {
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", text.lines().next()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let (status, body) =
            parse_response("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nPRE\n")
                .unwrap();
        assert_eq!(status, 503);
        assert_eq!(body, "PRE\n");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response("hello").is_err());
    }
}
