//! The demo's `envoy/demo/<f>.curl` files: shell lines (usually `curl ...`) with `#` comments.
//! `cargo xtask demo` prints them; `cargo xtask demo --check` runs them and checks the statuses.
//!
//! Format: a command may continue over lines ending in `\`. Each command runs in `bash -c` as
//! written (pipes and loops work) and must exit 0. A comment `# expect: 200 200 429` right before
//! a command lists the statuses its output must show (the `HTTP/1.1 200 OK` lines of `curl -i`
//! or `-D -`), in order; without it, no status in the output may be a 5xx.

/// One runnable command with its expectation.
#[derive(Debug, PartialEq)]
pub struct Command {
    pub line: String,
    pub expect: Option<Vec<u16>>,
}

/// Parses a `.curl` file. Errors name the 1-based line.
pub fn parse(text: &str) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    let mut pending_expect: Option<Vec<u16>> = None;
    let mut current = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_empty() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(codes) = comment.trim().strip_prefix("expect:") {
                    pending_expect = Some(parse_codes(codes).map_err(|e| {
                        format!("line {}: {e} (expected `# expect: 200 429`)", index + 1)
                    })?);
                }
                continue;
            }
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                commands.push(Command {
                    line: std::mem::take(&mut current).trim().to_owned(),
                    expect: pending_expect.take(),
                });
            }
        }
    }
    if !current.trim().is_empty() {
        return Err("last command ends with `\\` (a continuation with nothing after it)".into());
    }
    Ok(commands)
}

fn parse_codes(codes: &str) -> Result<Vec<u16>, String> {
    let parsed: Vec<u16> = codes
        .split_whitespace()
        .map(|c| {
            c.parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(|| format!("`{c}` is not an HTTP status"))
        })
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err("no status listed".into());
    }
    Ok(parsed)
}

/// A response as seen in curl's header dump.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// The headers worth showing in a demo (upstream identity, filter decisions, caching).
    pub key_headers: Vec<String>,
}

/// Splits curl output holding headers (`-i` or `-D -`; possibly several responses from a loop
/// or redirects) into responses. Informational 1xx responses are dropped.
pub fn parse_header_dump(dump: &str) -> Vec<Response> {
    let mut responses: Vec<Response> = Vec::new();
    for line in dump.lines().map(str::trim_end) {
        if line.starts_with("HTTP/") {
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            responses.push(Response {
                status,
                key_headers: Vec::new(),
            });
        } else if let (Some(response), Some((name, _))) =
            (responses.last_mut(), line.split_once(':'))
        {
            if is_key_header(&name.to_ascii_lowercase()) {
                response.key_headers.push(line.to_owned());
            }
        }
    }
    responses.retain(|r| !(100..200).contains(&r.status));
    responses
}

fn is_key_header(name: &str) -> bool {
    (name.starts_with("x-") && !name.starts_with("x-envoy-"))
        || name.starts_with("ratelimit")
        || matches!(
            name,
            "age" | "cache-control" | "etag" | "retry-after" | "location" | "vary"
        )
}

/// Checks responses against a command's expectation; the error says what differed.
pub fn check(command: &Command, responses: &[Response]) -> Result<(), String> {
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    match &command.expect {
        Some(expected) if *expected != statuses => {
            Err(format!("expected statuses {expected:?}, got {statuses:?}"))
        }
        Some(_) => Ok(()),
        None => match statuses.iter().find(|s| **s >= 500) {
            Some(s) => Err(format!("server error {s} (statuses {statuses:?})")),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_comments_continuations_and_expectations() {
        let text = "# Rate limit: the 4th request is rejected\n\
                    # expect: 200 200 200 429\n\
                    for i in 1 2 3 4; do curl -s \\\n   http://127.0.0.1:10000/; done\n\
                    \n\
                    curl -si http://127.0.0.1:10000/a\n";
        let commands = parse(text).unwrap();
        assert_eq!(
            commands,
            vec![
                Command {
                    line: "for i in 1 2 3 4; do curl -s http://127.0.0.1:10000/; done".into(),
                    expect: Some(vec![200, 200, 200, 429]),
                },
                Command {
                    line: "curl -si http://127.0.0.1:10000/a".into(),
                    expect: None,
                },
            ]
        );
    }

    #[test]
    fn rejects_bad_expectations_with_the_line_number() {
        let err = parse("curl a\n# expect: ok\ncurl b\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(err.contains("`ok`"), "{err}");
    }

    #[test]
    fn rejects_a_dangling_continuation() {
        assert!(parse("curl \\\n").is_err());
    }

    #[test]
    fn splits_a_dump_into_responses_and_keeps_key_headers() {
        let dump = "HTTP/1.1 100 Continue\r\n\r\n\
                    HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-upstream-id: u2\r\n\
                    x-envoy-upstream-service-time: 1\r\nAge: 3\r\n\r\n\
                    HTTP/1.1 429 Too Many Requests\r\nretry-after: 10\r\n\r\n";
        let responses = parse_header_dump(dump);
        assert_eq!(
            responses,
            vec![
                Response {
                    status: 200,
                    key_headers: vec!["x-upstream-id: u2".into(), "Age: 3".into()],
                },
                Response {
                    status: 429,
                    key_headers: vec!["retry-after: 10".into()],
                },
            ]
        );
    }

    fn responses(statuses: &[u16]) -> Vec<Response> {
        statuses
            .iter()
            .map(|s| Response {
                status: *s,
                key_headers: vec![],
            })
            .collect()
    }

    #[test]
    fn expectation_must_match_every_status_in_order() {
        let command = Command {
            line: "curl".into(),
            expect: Some(vec![200, 429]),
        };
        assert!(check(&command, &responses(&[200, 429])).is_ok());
        assert!(check(&command, &responses(&[429, 200])).is_err());
        assert!(check(&command, &responses(&[200])).is_err());
    }

    #[test]
    fn without_expectation_any_status_below_500_passes() {
        let command = Command {
            line: "curl".into(),
            expect: None,
        };
        assert!(check(&command, &responses(&[200, 404, 429])).is_ok());
        // Output without status lines (e.g. `curl -s` of a body) is judged by the exit code alone.
        assert!(check(&command, &responses(&[])).is_ok());
        assert!(check(&command, &responses(&[200, 503])).is_err());
    }
}
