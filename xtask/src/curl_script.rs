//! The demo's `envoy/demo/<f>.curl` files: shell lines (usually `curl ...`) with `#` comments.
//! `cargo xtask demo` prints them; `cargo xtask demo --check` runs them and checks what their
//! comments claim.
//!
//! Format: a command may continue over lines ending in `\`. Each command runs in `bash -c` as
//! written (pipes and loops work) and must exit 0. Comments right before a command may hold
//! expectations, each checked against that command's output:
//!
//! - `# expect: 200 200 429` — the statuses its output shows (the `HTTP/1.1 200 OK` lines of
//!   `curl -i` or `-D -`), exactly and in order. Without it, no status may be a 5xx.
//! - `# expect-header: NAME: TEXT` — every response in the output carries header NAME (any case)
//!   with a value containing TEXT; `# expect-header: NAME` only asks for the header.
//! - `# expect-no-header: NAME` — no response carries NAME.
//! - `# expect-same: NAME` — at least two responses, all carrying NAME with one and the same value.
//! - `# expect-output: TEXT` — some line of the output contains TEXT (a body, a stats line).
//! - `# expect-count: 0..5 TEXT` — for a tally as `sort | uniq -c` prints it (`     12 200 u3`):
//!   the counts of the lines whose text matches TEXT add up to a number in the range (`40`,
//!   `0..5`, `4..`). A text with no line counts 0; output without any tally line fails.
//!
//! TEXT is a substring, or with a leading `~` a regular expression (`~hits: [1-9]`). The header
//! and output expectations take a response number, `expect-header@2:`, to look only at the 2nd
//! response of the output (responses are split at the status lines; informational 1xx ones are
//! dropped). Output without any status line (a `grep` that keeps only headers) is one response.
//! An expectation with nothing to check (a misspelt directive, no command after it) is an error.

use regex_lite::Regex;

/// One runnable command with its expectations.
#[derive(Debug, PartialEq)]
pub struct Command {
    pub line: String,
    pub expect: Option<Vec<u16>>,
    pub claims: Vec<Claim>,
}

/// One `# expect-...` line other than the statuses.
#[derive(Debug, PartialEq)]
pub struct Claim {
    /// The comment as written (without `#`), for messages.
    pub text: String,
    /// 1-based response number (`@N`); `None`: every response (or, for output, anywhere).
    pub response: Option<usize>,
    pub kind: ClaimKind,
}

#[derive(Debug, PartialEq)]
pub enum ClaimKind {
    Header {
        name: String,
        value: Option<Pattern>,
    },
    NoHeader {
        name: String,
    },
    Same {
        name: String,
    },
    Output(Pattern),
    /// `expect-count`: the tally lines matching the pattern add up to `min..=max`.
    Count {
        min: u64,
        max: Option<u64>,
        pattern: Pattern,
    },
}

/// A substring, or a regular expression (`~...`).
#[derive(Debug)]
pub enum Pattern {
    Contains(String),
    Regex(Regex),
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Pattern::Contains(a), Pattern::Contains(b)) => a == b,
            (Pattern::Regex(a), Pattern::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        match text.strip_prefix('~') {
            Some(re) => Regex::new(re)
                .map(Pattern::Regex)
                .map_err(|e| format!("bad regular expression `{re}`: {e}")),
            None => Ok(Pattern::Contains(text.to_owned())),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Contains(s) => text.contains(s.as_str()),
            Pattern::Regex(re) => re.is_match(text),
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Contains(s) => write!(f, "{s:?}"),
            Pattern::Regex(re) => write!(f, "/{}/", re.as_str()),
        }
    }
}

/// Parses a `.curl` file. Errors name the 1-based line.
pub fn parse(text: &str) -> Result<Vec<Command>, String> {
    let mut commands = Vec::new();
    let mut pending_expect: Option<Vec<u16>> = None;
    let mut pending_claims: Vec<Claim> = Vec::new();
    let mut pending_line = 0;
    let mut current = String::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = |e: String| format!("line {}: {e}", index + 1);
        if current.is_empty() {
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                match directive(comment.trim()).map_err(at)? {
                    None => {}
                    Some(Directive::Statuses(codes)) => {
                        if pending_expect.is_some() {
                            return Err(at("a second `# expect:` for the same command".into()));
                        }
                        pending_expect = Some(codes);
                        pending_line = index + 1;
                    }
                    Some(Directive::Claim(claim)) => {
                        pending_claims.push(claim);
                        pending_line = index + 1;
                    }
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
                    claims: std::mem::take(&mut pending_claims),
                });
            }
        }
    }
    if !current.trim().is_empty() {
        return Err("last command ends with `\\` (a continuation with nothing after it)".into());
    }
    if pending_expect.is_some() || !pending_claims.is_empty() {
        return Err(format!(
            "line {pending_line}: expectation without a command after it"
        ));
    }
    Ok(commands)
}

enum Directive {
    Statuses(Vec<u16>),
    Claim(Claim),
}

/// `expect...: ...` comments; `None` for every other comment.
fn directive(comment: &str) -> Result<Option<Directive>, String> {
    let Some((head, rest)) = comment.split_once(':') else {
        return Ok(None);
    };
    let head = head.trim();
    if !head.starts_with("expect")
        || !head
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '@')
    {
        return Ok(None);
    }
    let rest = rest.trim();
    let (name, response) = match head.split_once('@') {
        None => (head, None),
        Some((name, n)) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => (name, Some(n)),
            _ => return Err(format!("`{head}`: the response number must be 1 or more")),
        },
    };
    let header_name = |what: &str| -> Result<String, String> {
        let valid = !what.is_empty()
            && what
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if valid {
            Ok(what.to_ascii_lowercase())
        } else {
            Err(format!("`{head}`: `{what}` is not a header name"))
        }
    };
    let kind = match name {
        "expect" => {
            if response.is_some() {
                return Err("`# expect:` lists every status; it takes no response number".into());
            }
            return parse_codes(rest)
                .map(|c| Some(Directive::Statuses(c)))
                .map_err(|e| format!("{e} (expected `# expect: 200 429`)"));
        }
        "expect-header" => {
            let (n, value) = match rest.split_once(':') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (rest, None),
            };
            ClaimKind::Header {
                name: header_name(n)?,
                value: value
                    .filter(|v| !v.is_empty())
                    .map(Pattern::parse)
                    .transpose()?,
            }
        }
        "expect-no-header" => ClaimKind::NoHeader {
            name: header_name(rest)?,
        },
        "expect-same" => {
            if response.is_some() {
                return Err("`expect-same` compares every response; it takes no number".into());
            }
            ClaimKind::Same {
                name: header_name(rest)?,
            }
        }
        "expect-output" => {
            if rest.is_empty() {
                return Err("`expect-output` needs the text to look for".into());
            }
            ClaimKind::Output(Pattern::parse(rest)?)
        }
        "expect-count" => {
            if response.is_some() {
                return Err("`expect-count` adds up the whole tally; it takes no number".into());
            }
            let (range, text) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let text = text.trim();
            let (min, max) = parse_range(range).ok_or_else(|| {
                format!("`{range}` is not a count or range (`40`, `0..5`, `4..`)")
            })?;
            if text.is_empty() {
                return Err("`expect-count` needs the text of the lines to add up".into());
            }
            ClaimKind::Count {
                min,
                max,
                pattern: Pattern::parse(text)?,
            }
        }
        other => {
            return Err(format!(
                "unknown expectation `{other}` (known: expect, expect-header, expect-no-header, \
                 expect-same, expect-output, expect-count)"
            ))
        }
    };
    Ok(Some(Directive::Claim(Claim {
        text: comment.to_owned(),
        response,
        kind,
    })))
}

/// `40`, `0..5` or `4..` as `(min, max)`.
fn parse_range(range: &str) -> Option<(u64, Option<u64>)> {
    match range.split_once("..") {
        None => range.parse().ok().map(|n| (n, Some(n))),
        Some((min, "")) => min.parse().ok().map(|n| (n, None)),
        Some((min, max)) => {
            let (min, max) = (min.parse().ok()?, max.parse().ok()?);
            (min <= max).then_some((min, Some(max)))
        }
    }
}

/// A line as `uniq -c` prints it: the count and the counted text.
fn tally_line(line: &str) -> Option<(u64, &str)> {
    let line = line.trim_start();
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let count = line[..digits].parse().ok()?;
    let text = line[digits..].strip_prefix(' ')?;
    Some((count, text.trim_end()))
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

/// A response as seen in curl's output.
#[derive(Debug, PartialEq)]
pub struct Response {
    /// `0` for the one pseudo-response of output without status lines.
    pub status: u16,
    /// The headers worth showing in a demo (upstream identity, filter decisions, caching).
    pub key_headers: Vec<String>,
    /// Every `name: value` line, name lower-cased, value trimmed.
    pub headers: Vec<(String, String)>,
    /// Every line of this response's part of the output (status line, headers, body).
    pub lines: Vec<String>,
}

impl Response {
    fn new(status: u16) -> Response {
        Response {
            status,
            key_headers: Vec::new(),
            headers: Vec::new(),
            lines: Vec::new(),
        }
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits curl output holding headers (`-i` or `-D -`; possibly several responses from a loop
/// or redirects) into responses. Informational 1xx responses are dropped; lines before the
/// first status line are dropped too.
pub fn parse_header_dump(dump: &str) -> Vec<Response> {
    let mut responses: Vec<Response> = Vec::new();
    for line in dump.lines().map(str::trim_end) {
        if line.starts_with("HTTP/") {
            let status = line
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .unwrap_or(0);
            responses.push(Response::new(status));
        }
        if let Some(response) = responses.last_mut() {
            add_line(response, line);
        }
    }
    responses.retain(|r| !(100..200).contains(&r.status));
    responses
}

fn add_line(response: &mut Response, line: &str) {
    response.lines.push(line.to_owned());
    let Some((name, value)) = line.split_once(':') else {
        return;
    };
    let is_token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !is_token {
        return;
    }
    let lower = name.to_ascii_lowercase();
    if is_key_header(&lower) {
        response.key_headers.push(line.to_owned());
    }
    response.headers.push((lower, value.trim().to_owned()));
}

/// The responses the claims look at: the status-line responses, or when there are none, the
/// whole output as one.
fn claim_responses(output: &str) -> Vec<Response> {
    let responses = parse_header_dump(output);
    if !responses.is_empty() {
        return responses;
    }
    let mut whole = Response::new(0);
    for line in output.lines().map(str::trim_end) {
        add_line(&mut whole, line);
    }
    vec![whole]
}

fn is_key_header(name: &str) -> bool {
    (name.starts_with("x-") && !name.starts_with("x-envoy-"))
        || name.starts_with("ratelimit")
        || matches!(
            name,
            "age" | "cache-control" | "etag" | "retry-after" | "location" | "vary"
        )
}

/// Checks a command's output against its expectations: the statuses, then every claim. The
/// error lists each expectation that failed and why.
pub fn check(command: &Command, output: &str) -> Result<(), String> {
    let mut failures = Vec::new();
    let statuses: Vec<u16> = parse_header_dump(output).iter().map(|r| r.status).collect();
    match &command.expect {
        Some(expected) if *expected != statuses => {
            failures.push(format!("expected statuses {expected:?}, got {statuses:?}"))
        }
        Some(_) => {}
        None => {
            if let Some(s) = statuses.iter().find(|s| **s >= 500) {
                failures.push(format!("server error {s} (statuses {statuses:?})"));
            }
        }
    }
    let responses = claim_responses(output);
    for claim in &command.claims {
        if let Err(e) = check_claim(claim, output, &responses) {
            failures.push(format!("`{}`: {e}", claim.text));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n  FAILED: "))
    }
}

fn check_claim(claim: &Claim, output: &str, responses: &[Response]) -> Result<(), String> {
    let selected: Vec<(usize, &Response)> = match claim.response {
        None => responses
            .iter()
            .enumerate()
            .map(|(i, r)| (i + 1, r))
            .collect(),
        Some(n) => match responses.get(n - 1) {
            Some(r) => vec![(n, r)],
            None => {
                return Err(format!(
                    "the output has {} response(s), no response {n}",
                    responses.len()
                ))
            }
        },
    };
    let shown = |values: Vec<&str>| {
        if values.is_empty() {
            "no such header".to_owned()
        } else {
            format!("got {values:?}")
        }
    };
    match &claim.kind {
        ClaimKind::Header { name, value } => {
            for (n, r) in &selected {
                let values: Vec<&str> = r.header_values(name).collect();
                let ok = match value {
                    None => !values.is_empty(),
                    Some(p) => values.iter().any(|v| p.matches(v)),
                };
                if !ok {
                    return Err(format!("response {n}: {}", shown(values)));
                }
            }
            Ok(())
        }
        ClaimKind::NoHeader { name } => {
            for (n, r) in &selected {
                let values: Vec<&str> = r.header_values(name).collect();
                if !values.is_empty() {
                    return Err(format!("response {n} has {name}: {values:?}"));
                }
            }
            Ok(())
        }
        ClaimKind::Same { name } => {
            if selected.len() < 2 {
                return Err(format!(
                    "needs at least two responses to compare, the output has {}",
                    selected.len()
                ));
            }
            let mut first: Option<&str> = None;
            for (n, r) in &selected {
                let values: Vec<&str> = r.header_values(name).collect();
                let [value] = values.as_slice() else {
                    return Err(format!("response {n}: {}", shown(values)));
                };
                match first {
                    None => first = Some(value),
                    Some(f) if f == *value => {}
                    Some(f) => {
                        return Err(format!("response 1 has {f:?}, response {n} has {value:?}"))
                    }
                }
            }
            Ok(())
        }
        ClaimKind::Output(pattern) => {
            let found = match claim.response {
                None => output.lines().any(|l| pattern.matches(l)),
                Some(_) => selected
                    .iter()
                    .any(|(_, r)| r.lines.iter().any(|l| pattern.matches(l))),
            };
            if found {
                Ok(())
            } else {
                Err(format!("no line matches {pattern}"))
            }
        }
        ClaimKind::Count { min, max, pattern } => {
            let tally: Vec<(u64, &str)> = output.lines().filter_map(tally_line).collect();
            if tally.is_empty() {
                return Err(
                    "no tally line (`COUNT TEXT`, as `uniq -c` prints) in the output".into(),
                );
            }
            let total: u64 = tally
                .iter()
                .filter(|(_, text)| pattern.matches(text))
                .map(|(n, _)| n)
                .sum();
            if total >= *min && max.is_none_or(|m| total <= m) {
                Ok(())
            } else {
                let wanted = match max {
                    Some(m) if m == min => format!("{min}"),
                    Some(m) => format!("{min} to {m}"),
                    None => format!("at least {min}"),
                };
                Err(format!(
                    "lines matching {pattern} add up to {total}, expected {wanted}"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(expect: Option<Vec<u16>>, claims: &str) -> Command {
        let text = format!("{claims}\ncurl x\n");
        let mut parsed = parse(&text).unwrap();
        assert_eq!(parsed.len(), 1);
        let mut c = parsed.remove(0);
        c.expect = expect;
        c
    }

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
                    claims: vec![],
                },
                Command {
                    line: "curl -si http://127.0.0.1:10000/a".into(),
                    expect: None,
                    claims: vec![],
                },
            ]
        );
    }

    #[test]
    fn parses_every_kind_of_claim() {
        let text = "# Prose: expect nothing from this line\n\
                    # expect-header: X-Cache: HIT\n\
                    # expect-header@2: retry-after\n\
                    # expect-header: ratelimit: ~r=[01];\n\
                    # expect-no-header: x-hash-explain\n\
                    # expect-same: x-upstream-id\n\
                    # expect-output@2: \"error\":\"rate_limited\"\n\
                    curl x\n";
        let commands = parse(text).unwrap();
        let claims: Vec<(Option<usize>, &ClaimKind)> = commands[0]
            .claims
            .iter()
            .map(|c| (c.response, &c.kind))
            .collect();
        assert_eq!(
            claims,
            vec![
                (
                    None,
                    &ClaimKind::Header {
                        name: "x-cache".into(),
                        value: Some(Pattern::Contains("HIT".into()))
                    }
                ),
                (
                    Some(2),
                    &ClaimKind::Header {
                        name: "retry-after".into(),
                        value: None
                    }
                ),
                (
                    None,
                    &ClaimKind::Header {
                        name: "ratelimit".into(),
                        value: Some(Pattern::Regex(Regex::new("r=[01];").unwrap()))
                    }
                ),
                (
                    None,
                    &ClaimKind::NoHeader {
                        name: "x-hash-explain".into()
                    }
                ),
                (
                    None,
                    &ClaimKind::Same {
                        name: "x-upstream-id".into()
                    }
                ),
                (
                    Some(2),
                    &ClaimKind::Output(Pattern::Contains("\"error\":\"rate_limited\"".into()))
                ),
            ]
        );
        assert_eq!(commands[0].claims[0].text, "expect-header: X-Cache: HIT");
    }

    #[test]
    fn rejects_bad_expectations_with_the_line_number() {
        let err = parse("curl a\n# expect: ok\ncurl b\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(err.contains("`ok`"), "{err}");
        for (bad, why) in [
            (
                "# expect-heder: x-cache: HIT",
                "unknown expectation `expect-heder`",
            ),
            ("# expect-header: x cache: HIT", "not a header name"),
            ("# expect-header@0: x-cache", "1 or more"),
            ("# expect-output: ~a(", "bad regular expression"),
            ("# expect-output:", "needs the text"),
            ("# expect-same@2: x-upstream-id", "takes no number"),
            ("# expect@1: 200", "takes no response number"),
        ] {
            let err = parse(&format!("curl a\n{bad}\ncurl b\n")).unwrap_err();
            assert!(
                err.starts_with("line 2:") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn rejects_an_expectation_without_a_command() {
        let err = parse("curl a\n\n# expect-header: x-cache: HIT\n").unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
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
                    HTTP/1.1 429 Too Many Requests\r\nretry-after: 10\r\n\r\n\
                    {\"error\":\"rate_limited\"}\n";
        let responses = parse_header_dump(dump);
        let summary: Vec<(u16, Vec<String>)> = responses
            .iter()
            .map(|r| (r.status, r.key_headers.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (200, vec!["x-upstream-id: u2".into(), "Age: 3".into()]),
                (429, vec!["retry-after: 10".into()]),
            ]
        );
        assert_eq!(
            responses[0].headers[2],
            ("x-envoy-upstream-service-time".into(), "1".into())
        );
        // A JSON body line is not a header, but it is a line of its response.
        assert_eq!(responses[1].headers.len(), 1);
        assert!(responses[1]
            .lines
            .iter()
            .any(|l| l.contains("rate_limited")));
    }

    const TWO: &str = "HTTP/1.1 200 OK\nx-upstream-id: u3\nx-hash-explain: key=header:x-user-id; reason=primary\n\
                       HTTP/1.1 429 Too Many Requests\nx-upstream-id: u3\nretry-after: 30\n\
                       {\"error\":\"rate_limited\",\"retry_after\":30,\"rule\":\"demo-per-ip\"}\n";

    #[test]
    fn expectation_must_match_every_status_in_order() {
        let c = |codes: Vec<u16>| command(Some(codes), "");
        assert!(check(&c(vec![200, 429]), TWO).is_ok());
        assert!(check(&c(vec![429, 200]), TWO).is_err());
        assert!(check(&c(vec![200]), TWO).is_err());
    }

    #[test]
    fn without_expectation_any_status_below_500_passes() {
        let c = command(None, "");
        assert!(check(
            &c,
            "HTTP/1.1 200 OK\nHTTP/1.1 404 Not Found\nHTTP/1.1 429 x\n"
        )
        .is_ok());
        // Output without status lines (e.g. `curl -s` of a body) is judged by the exit code alone.
        assert!(check(&c, "{\"purged\":1}\n").is_ok());
        assert!(check(&c, "HTTP/1.1 200 OK\nHTTP/1.1 503 x\n").is_err());
    }

    #[test]
    fn a_header_claim_holds_for_every_response_or_the_numbered_one() {
        let ok = |claims: &str| check(&command(None, claims), TWO);
        assert!(ok("# expect-header: x-upstream-id: u3").is_ok());
        assert!(ok("# expect-header: X-Upstream-ID: u").is_ok());
        assert!(ok("# expect-header: x-upstream-id: ~^u[0-9]$").is_ok());
        let err = ok("# expect-header: retry-after").unwrap_err();
        assert!(err.contains("response 1: no such header"), "{err}");
        assert!(ok("# expect-header@2: retry-after: 30").is_ok());
        let err = ok("# expect-header@2: retry-after: 60").unwrap_err();
        assert!(err.contains("response 2: got [\"30\"]"), "{err}");
        assert!(ok("# expect-header@1: x-hash-explain: reason=primary").is_ok());
        assert!(ok("# expect-header@1: x-hash-explain: reason=health_skip").is_err());
        let err = ok("# expect-header@3: x-upstream-id").unwrap_err();
        assert!(err.contains("no response 3"), "{err}");
    }

    #[test]
    fn absent_and_same_headers() {
        let ok = |claims: &str| check(&command(None, claims), TWO);
        assert!(ok("# expect-no-header: location").is_ok());
        assert!(ok("# expect-no-header@2: x-hash-explain").is_ok());
        let err = ok("# expect-no-header: x-hash-explain").unwrap_err();
        assert!(err.contains("response 1 has x-hash-explain"), "{err}");
        assert!(ok("# expect-same: x-upstream-id").is_ok());
        let moved = TWO.replacen("x-upstream-id: u3", "x-upstream-id: u1", 1);
        let err = check(&command(None, "# expect-same: x-upstream-id"), &moved).unwrap_err();
        assert!(err.contains("\"u1\"") && err.contains("\"u3\""), "{err}");
        let one = "HTTP/1.1 200 OK\nx-upstream-id: u3\n";
        assert!(check(&command(None, "# expect-same: x-upstream-id"), one).is_err());
    }

    #[test]
    fn output_claims_search_lines() {
        let ok = |claims: &str| check(&command(None, claims), TWO);
        assert!(ok("# expect-output: \"rule\":\"demo-per-ip\"").is_ok());
        assert!(ok("# expect-output@2: rate_limited").is_ok());
        assert!(ok("# expect-output@1: rate_limited").is_err());
        let stats = "wasmcustom.switchyard.cache.hits: 2\nwasmcustom.switchyard.cache.misses: 0\n";
        let c = |claims: &str| check(&command(None, claims), stats);
        assert!(c("# expect-output: ~switchyard\\.cache\\.hits: [1-9]").is_ok());
        assert!(c("# expect-output: ~switchyard\\.cache\\.misses: [1-9]").is_err());
    }

    #[test]
    fn count_claims_add_up_a_tally() {
        let tally = "     27 200 u1\n     13 200 u2\n";
        let ok = |claims: &str| check(&command(None, claims), tally);
        assert!(ok("# expect-count: 40 ~^200 u[123]$").is_ok());
        assert!(ok("# expect-count: 27 200 u1").is_ok());
        assert!(ok("# expect-count: 10.. 200 u2").is_ok());
        // A text without a line counts 0.
        assert!(ok("# expect-count: 0..5 200 u3").is_ok());
        let err = ok("# expect-count: 1.. 200 u3").unwrap_err();
        assert!(err.contains("add up to 0, expected at least 1"), "{err}");
        let err = ok("# expect-count: 0..5 200 u1").unwrap_err();
        assert!(err.contains("add up to 27, expected 0 to 5"), "{err}");
        // Output that is no tally at all is a failure, not a count of 0.
        let err = check(&command(None, "# expect-count: 0..5 u3"), TWO).unwrap_err();
        assert!(err.contains("no tally line"), "{err}");
        for bad in [
            "# expect-count: 5..1 u3",
            "# expect-count: x u3",
            "# expect-count: 3",
            "# expect-count@1: 3 u3",
        ] {
            assert!(parse(&format!("{bad}\ncurl x\n")).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_without_status_lines_is_one_response() {
        let grepped = "x-upstream-id: u3\ncache-status: switchyard; hit; ttl=60\nx-cache: HIT\n";
        let ok = |claims: &str| check(&command(None, claims), grepped);
        assert!(ok("# expect-header: x-cache: HIT").is_ok());
        assert!(ok("# expect-header@1: cache-status: ttl=60").is_ok());
        assert!(ok("# expect-header: x-cache: MISS").is_err());
        assert!(ok("# expect-no-header: age").is_ok());
    }

    #[test]
    fn every_failing_claim_is_reported() {
        let err = check(
            &command(
                Some(vec![200]),
                "# expect-header: x-cache: HIT\n# expect-output: nowhere",
            ),
            TWO,
        )
        .unwrap_err();
        assert!(err.contains("expected statuses [200]"), "{err}");
        assert!(err.contains("`expect-header: x-cache: HIT`"), "{err}");
        assert!(err.contains("`expect-output: nowhere`"), "{err}");
    }

    /// Every shipped demo file parses, and every command in it asserts something beyond "no 5xx"
    /// unless it only publishes state for a later command.
    #[test]
    fn shipped_demo_files_parse_and_assert_their_claims() {
        let dir = crate::util::workspace_root().join("envoy/demo");
        for filter in crate::build::FILTERS {
            let path = dir.join(format!("{filter}.curl"));
            let text = std::fs::read_to_string(&path).unwrap();
            let commands = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!commands.is_empty(), "{}", path.display());
            for c in &commands {
                assert!(
                    c.expect.is_some() || !c.claims.is_empty(),
                    "{}: `{}` asserts nothing",
                    path.display(),
                    c.line
                );
            }
        }
    }
}
