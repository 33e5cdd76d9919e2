//! The router's configuration as written in JSON, and its validation into a compiled table.
//!
//! Two documents share the route-table fields: the plugin configuration ([`ConfigSpec`]) and
//! the table served by the reload endpoint ([`TableSpec`], only `routes` and `default`).
//! Everything is validated completely before anything is used; errors name the JSON path.

use crate::table::{
    Action, ActionKind, HeaderOps, Mirror, Redirect, Respond, Rewrite, Route, Table, Target,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use switchyard_core::config::index_path;
use switchyard_core::matcher::{PathMatcher, Regex, Template};
use switchyard_core::{parse_config, ConfigError, Duration, KeySources, Matcher};

pub const DEFAULT_CLUSTER_HEADER: &str = "x-switchyard-cluster";
/// Upper bound on routes in one table (keeps a bad reload from exhausting worker memory).
pub const MAX_ROUTES: usize = 10_000;

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.to_string()
}

/// The plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub default: Option<ActionSpec>,
    #[serde(default)]
    pub reload: Option<ReloadSpec>,
    /// When set, every cluster an action names must be in this list.
    #[serde(default)]
    pub known_clusters: Option<Vec<String>>,
    /// Adds `x-switchyard-route` to responses: the route that matched and why.
    #[serde(default)]
    pub explain: bool,
    /// Adds `x-switchyard-table-version` to responses.
    #[serde(default)]
    pub version_header: bool,
}

/// A route table served by the reload endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub default: Option<ActionSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    /// Kept as JSON so the matcher compiles with its own error paths and `explain` can quote it.
    #[serde(rename = "match", default)]
    pub matcher: Option<serde_json::Value>,
    pub action: ActionSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub cluster: Option<String>,
    pub weighted: Option<Vec<WeightedSpec>>,
    pub sticky: Option<KeySources>,
    pub rewrite: Option<RewriteSpec>,
    pub redirect: Option<RedirectSpec>,
    pub respond: Option<RespondSpec>,
    pub request_headers: Option<HeaderOpsSpec>,
    pub response_headers: Option<HeaderOpsSpec>,
    pub mirror: Option<MirrorSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedSpec {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteSpec {
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<RegexRewriteSpec>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteSpec {
    pub pattern: String,
    pub substitution: String,
}

fn default_redirect_status() -> u16 {
    301
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub append: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

fn default_mirror_percent() -> f64 {
    100.0
}
fn default_mirror_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_mirror_max_body() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    pub cluster: String,
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
    #[serde(default = "default_mirror_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_mirror_max_body")]
    pub max_body_bytes: usize,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_reload_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_reload_max_bytes() -> usize {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSpec {
    pub cluster: String,
    pub path: String,
    #[serde(default = "default_reload_interval")]
    pub interval: Duration,
    /// `:authority` of the fetch; defaults to the cluster name.
    pub authority: Option<String>,
    #[serde(default = "default_reload_timeout")]
    pub timeout: Duration,
    /// Larger tables are rejected.
    #[serde(default = "default_reload_max_bytes")]
    pub max_bytes: usize,
}

/// The validated plugin configuration.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub cluster_header: String,
    pub table: Table,
    pub reload: Option<ReloadSpec>,
    pub known_clusters: Option<Vec<String>>,
    pub explain: bool,
    pub version_header: bool,
}

/// Parses and validates the plugin configuration completely.
pub fn parse_router_config(bytes: &[u8]) -> Result<RouterConfig, ConfigError> {
    let spec: ConfigSpec = parse_config(bytes)?;
    let header = &spec.cluster_header;
    if !valid_header_name(header) {
        return Err(ConfigError::new(
            "cluster_header",
            format!("{header:?} is not a valid lower-case header name"),
        ));
    }
    if let Some(known) = &spec.known_clusters {
        if known.is_empty() {
            return Err(ConfigError::new(
                "known_clusters",
                "must list at least one cluster (or be left out)",
            ));
        }
        for (i, c) in known.iter().enumerate() {
            check_cluster_name(c)
                .map_err(|m| ConfigError::new(index_path("known_clusters", i), m))?;
        }
    }
    if let Some(r) = &spec.reload {
        check_reload(r)?;
        // A fetched table must not be able to send traffic (or mirror copies) anywhere else.
        if spec.known_clusters.is_none() {
            return Err(ConfigError::new(
                "known_clusters",
                "required when reload is set: a fetched table may only route and mirror to the clusters listed here",
            ));
        }
    }
    let table = compile_table(
        &spec.routes,
        spec.default.as_ref(),
        spec.known_clusters.as_deref(),
        header,
    )?;
    Ok(RouterConfig {
        cluster_header: spec.cluster_header,
        table,
        reload: spec.reload,
        known_clusters: spec.known_clusters,
        explain: spec.explain,
        version_header: spec.version_header,
    })
}

/// Parses and validates a table served by the reload endpoint, with the plugin's known clusters.
pub fn parse_table(
    bytes: &[u8],
    known_clusters: Option<&[String]>,
    cluster_header: &str,
) -> Result<Table, ConfigError> {
    let spec: TableSpec = parse_config(bytes)?;
    compile_table(
        &spec.routes,
        spec.default.as_ref(),
        known_clusters,
        cluster_header,
    )
}

fn check_reload(r: &ReloadSpec) -> Result<(), ConfigError> {
    check_cluster_name(&r.cluster).map_err(|m| ConfigError::new("reload.cluster", m))?;
    if !r.path.starts_with('/') {
        return Err(ConfigError::new("reload.path", "must start with '/'"));
    }
    if r.interval < Duration::from_millis(100) {
        return Err(ConfigError::new(
            "reload.interval",
            "must be at least 100ms",
        ));
    }
    if r.timeout.is_zero() {
        return Err(ConfigError::new("reload.timeout", "must be positive"));
    }
    if r.max_bytes == 0 {
        return Err(ConfigError::new("reload.max_bytes", "must be positive"));
    }
    Ok(())
}

fn compile_table(
    routes: &[RouteSpec],
    default: Option<&ActionSpec>,
    known: Option<&[String]>,
    cluster_header: &str,
) -> Result<Table, ConfigError> {
    if routes.len() > MAX_ROUTES {
        return Err(ConfigError::new(
            "routes",
            format!(
                "at most {MAX_ROUTES} routes are allowed, got {}",
                routes.len()
            ),
        ));
    }
    let ctx = Ctx {
        known,
        cluster_header,
    };
    let mut names = HashSet::new();
    let mut compiled = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let at = index_path("routes", i);
        check_route_name(&r.name).map_err(|m| ConfigError::new(format!("{at}.name"), m))?;
        if !names.insert(r.name.as_str()) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("duplicate route name {:?}", r.name),
            ));
        }
        let (matcher, match_text) = match &r.matcher {
            Some(v) => (
                Matcher::from_json(v, &format!("{at}.match"))?,
                serde_json::to_string(v).unwrap_or_default(),
            ),
            None => (Matcher::always(), "{}".to_string()),
        };
        let action = compile_action(
            &r.action,
            matcher.path_matcher(),
            &format!("{at}.action"),
            &ctx,
        )?;
        compiled.push(Route {
            name: r.name.clone(),
            matcher,
            match_text,
            action,
        });
    }
    let default = match default {
        Some(a) => Some(compile_action(a, None, "default", &ctx)?),
        None => None,
    };
    Ok(Table::new(compiled, default))
}

struct Ctx<'a> {
    known: Option<&'a [String]>,
    cluster_header: &'a str,
}

impl Ctx<'_> {
    fn cluster(&self, name: &str, at: &str) -> Result<String, ConfigError> {
        check_cluster_name(name).map_err(|m| ConfigError::new(at, m))?;
        if let Some(known) = self.known {
            if !known.iter().any(|k| k == name) {
                return Err(ConfigError::new(
                    at,
                    format!("unknown cluster {name:?} (not in known_clusters)"),
                ));
            }
        }
        Ok(name.to_string())
    }
}

fn compile_action(
    a: &ActionSpec,
    path: Option<&PathMatcher>,
    at: &str,
    ctx: &Ctx,
) -> Result<Action, ConfigError> {
    let field = |f: &str| format!("{at}.{f}");
    let kinds = [
        a.cluster.is_some(),
        a.weighted.is_some(),
        a.redirect.is_some(),
        a.respond.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        return Err(ConfigError::new(
            at,
            "needs exactly one of cluster, weighted, redirect, respond",
        ));
    }
    let forwards = a.cluster.is_some() || a.weighted.is_some();
    if !forwards {
        for (name, set) in [
            ("rewrite", a.rewrite.is_some()),
            ("mirror", a.mirror.is_some()),
            ("request_headers", a.request_headers.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    field(name),
                    "only applies to cluster and weighted actions",
                ));
            }
        }
    }
    if a.sticky.is_some() && a.weighted.is_none() {
        return Err(ConfigError::new(
            field("sticky"),
            "only applies to weighted actions",
        ));
    }
    let captures = path.map(PathMatcher::capture_names).unwrap_or_default();
    let request_headers = match &a.request_headers {
        Some(h) => compile_header_ops(h, &field("request_headers"), Some(ctx.cluster_header))?,
        None => HeaderOps::default(),
    };
    let response_headers = match &a.response_headers {
        Some(h) => compile_header_ops(h, &field("response_headers"), None)?,
        None => HeaderOps::default(),
    };
    let kind = if let Some(c) = &a.cluster {
        ActionKind::Forward {
            target: Target::Cluster(ctx.cluster(c, &field("cluster"))?),
            rewrite: compile_rewrite(a.rewrite.as_ref(), path, &captures, &field("rewrite"))?,
            mirror: compile_mirror(a.mirror.as_ref(), &field("mirror"), ctx)?,
        }
    } else if let Some(w) = &a.weighted {
        let at_w = field("weighted");
        if w.is_empty() {
            return Err(ConfigError::new(at_w, "must list at least one cluster"));
        }
        let mut splits = Vec::with_capacity(w.len());
        let mut total: u64 = 0;
        for (i, s) in w.iter().enumerate() {
            let at_s = index_path(&at_w, i);
            let cluster = ctx.cluster(&s.cluster, &format!("{at_s}.cluster"))?;
            if splits.iter().any(|(c, _): &(String, u32)| *c == cluster) {
                return Err(ConfigError::new(
                    format!("{at_s}.cluster"),
                    format!("cluster {cluster:?} appears twice"),
                ));
            }
            total += u64::from(s.weight);
            splits.push((cluster, s.weight));
        }
        if total == 0 {
            return Err(ConfigError::new(at_w, "weights sum to zero"));
        }
        let sticky = a.sticky.clone().unwrap_or_default();
        ActionKind::Forward {
            target: Target::Weighted {
                splits,
                total,
                sticky,
            },
            rewrite: compile_rewrite(a.rewrite.as_ref(), path, &captures, &field("rewrite"))?,
            mirror: compile_mirror(a.mirror.as_ref(), &field("mirror"), ctx)?,
        }
    } else if let Some(r) = &a.redirect {
        ActionKind::Redirect(compile_redirect(r, path, &captures, &field("redirect"))?)
    } else if let Some(r) = &a.respond {
        ActionKind::Respond(compile_respond(r, &field("respond"))?)
    } else {
        return Err(ConfigError::new(at, "needs an action"));
    };
    Ok(Action {
        kind,
        request_headers,
        response_headers,
    })
}

fn check_references(pattern: &str, captures: &[String], at: &str) -> Result<(), ConfigError> {
    if pattern.matches('{').count() != pattern.matches('}').count() {
        return Err(ConfigError::new(
            at,
            format!("unbalanced braces in {pattern:?}"),
        ));
    }
    for name in Template::references(pattern) {
        if !captures.contains(&name) {
            let known = if captures.is_empty() {
                "the route's path matcher captures nothing".to_string()
            } else {
                format!("captures are {}", captures.join(", "))
            };
            return Err(ConfigError::new(
                at,
                format!("{pattern:?} uses undefined capture {{{name}}} ({known})"),
            ));
        }
    }
    Ok(())
}

fn matched_prefix(path: Option<&PathMatcher>, at: &str) -> Result<usize, ConfigError> {
    match path {
        Some(PathMatcher::Prefix { value, .. }) => Ok(value.len()),
        _ => Err(ConfigError::new(
            at,
            "replaces the matched prefix, so the route must match with path.prefix",
        )),
    }
}

fn compile_rewrite(
    r: Option<&RewriteSpec>,
    path: Option<&PathMatcher>,
    captures: &[String],
    at: &str,
) -> Result<Option<Rewrite>, ConfigError> {
    let Some(r) = r else { return Ok(None) };
    let ways = [r.path.is_some(), r.prefix.is_some(), r.regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if ways > 1 {
        return Err(ConfigError::new(
            at,
            "use at most one of path, prefix, regex",
        ));
    }
    if ways == 0 && r.host.is_none() {
        return Err(ConfigError::new(at, "needs path, prefix, regex or host"));
    }
    let mut out = Rewrite::default();
    if let Some(p) = &r.path {
        let at_p = format!("{at}.path");
        if !p.starts_with('/') {
            return Err(ConfigError::new(at_p, "must start with '/'"));
        }
        check_references(p, captures, &at_p)?;
        out.path_template = Some(p.clone());
    }
    if let Some(p) = &r.prefix {
        let at_p = format!("{at}.prefix");
        if !p.starts_with('/') {
            return Err(ConfigError::new(at_p, "must start with '/'"));
        }
        out.prefix = Some((matched_prefix(path, &at_p)?, p.clone()));
    }
    if let Some(rx) = &r.regex {
        let re = Regex::new(&rx.pattern).map_err(|e| {
            ConfigError::new(format!("{at}.regex.pattern"), format!("invalid regex: {e}"))
        })?;
        check_substitution(
            &rx.substitution,
            &re.names(),
            &format!("{at}.regex.substitution"),
        )?;
        out.regex = Some((re, rx.substitution.clone()));
    }
    if let Some(h) = &r.host {
        if h.is_empty()
            || h.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
        {
            return Err(ConfigError::new(
                format!("{at}.host"),
                format!("invalid host {h:?}"),
            ));
        }
        out.host = Some(h.clone());
    }
    Ok(Some(out))
}

/// Checks `$1` / `${name}` references of a regex substitution against the regex's groups.
fn check_substitution(sub: &str, groups: &[String], at: &str) -> Result<(), ConfigError> {
    let bytes = sub.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let rest = &sub[i + 1..];
        if let Some(stripped) = rest.strip_prefix('$') {
            // `$$` is a literal dollar.
            i += 2;
            let _ = stripped;
            continue;
        }
        let (name, used) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => return Err(ConfigError::new(at, "unterminated ${ in substitution")),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], end)
        };
        if name.is_empty() {
            return Err(ConfigError::new(
                at,
                "'$' must name a group (use $$ for a literal $)",
            ));
        }
        if name != "0" && !groups.iter().any(|g| g == name) {
            return Err(ConfigError::new(
                at,
                format!("substitution uses undefined group ${name}"),
            ));
        }
        i += 1 + used;
    }
    Ok(())
}

fn compile_redirect(
    r: &RedirectSpec,
    path: Option<&PathMatcher>,
    captures: &[String],
    at: &str,
) -> Result<Redirect, ConfigError> {
    if ![301, 302, 303, 307, 308].contains(&r.status) {
        return Err(ConfigError::new(
            format!("{at}.status"),
            format!(
                "{} is not a redirect status (301, 302, 303, 307, 308)",
                r.status
            ),
        ));
    }
    if r.path.is_some() && r.path_prefix.is_some() {
        return Err(ConfigError::new(
            at,
            "use at most one of path and path_prefix",
        ));
    }
    if let Some(s) = &r.scheme {
        if s != "http" && s != "https" {
            return Err(ConfigError::new(
                format!("{at}.scheme"),
                "must be \"http\" or \"https\"",
            ));
        }
    }
    if let Some(h) = &r.host {
        if h.is_empty()
            || h.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
        {
            return Err(ConfigError::new(
                format!("{at}.host"),
                format!("invalid host {h:?}"),
            ));
        }
    }
    let mut prefix = None;
    if let Some(p) = &r.path {
        let at_p = format!("{at}.path");
        if !p.starts_with('/') {
            return Err(ConfigError::new(at_p, "must start with '/'"));
        }
        check_references(p, captures, &at_p)?;
    }
    if let Some(p) = &r.path_prefix {
        let at_p = format!("{at}.path_prefix");
        if !p.starts_with('/') {
            return Err(ConfigError::new(at_p, "must start with '/'"));
        }
        prefix = Some((matched_prefix(path, &at_p)?, p.clone()));
    }
    Ok(Redirect {
        scheme: r.scheme.clone(),
        host: r.host.clone(),
        port: r.port,
        path_template: r.path.clone(),
        prefix,
        status: r.status,
        strip_query: r.strip_query,
    })
}

fn compile_respond(r: &RespondSpec, at: &str) -> Result<Respond, ConfigError> {
    if !(200..=599).contains(&r.status) {
        return Err(ConfigError::new(
            format!("{at}.status"),
            "must be between 200 and 599",
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in &r.headers {
        let at_h = format!("{at}.headers.{name}");
        check_header(name, value, &at_h)?;
        headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    Ok(Respond {
        status: r.status,
        body: r.body.clone(),
        headers,
    })
}

fn compile_mirror(
    m: Option<&MirrorSpec>,
    at: &str,
    ctx: &Ctx,
) -> Result<Option<Mirror>, ConfigError> {
    let Some(m) = m else { return Ok(None) };
    let cluster = ctx.cluster(&m.cluster, &format!("{at}.cluster"))?;
    if !(m.percent.is_finite() && (0.0..=100.0).contains(&m.percent)) {
        return Err(ConfigError::new(
            format!("{at}.percent"),
            "must be between 0 and 100",
        ));
    }
    if m.timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{at}.timeout"),
            "must be positive",
        ));
    }
    Ok(Some(Mirror {
        cluster,
        percent: m.percent,
        timeout: m.timeout,
        max_body_bytes: m.max_body_bytes,
    }))
}

fn compile_header_ops(
    h: &HeaderOpsSpec,
    at: &str,
    forbidden: Option<&str>,
) -> Result<HeaderOps, ConfigError> {
    let mut ops = HeaderOps::default();
    let check_name = |name: &str, at_h: &str| -> Result<String, ConfigError> {
        let lower = name.to_ascii_lowercase();
        if !valid_header_name(&lower) {
            return Err(ConfigError::new(
                at_h,
                format!("{name:?} is not a valid header name"),
            ));
        }
        if Some(lower.as_str()) == forbidden {
            return Err(ConfigError::new(
                at_h,
                "the cluster header is set by the router; use an action's cluster instead",
            ));
        }
        if lower == "host" {
            return Err(ConfigError::new(
                at_h,
                "use rewrite.host to change the host",
            ));
        }
        Ok(lower)
    };
    for (name, value) in &h.set {
        let at_h = format!("{at}.set.{name}");
        let lower = check_name(name, &at_h)?;
        check_header(&lower, value, &at_h)?;
        ops.set.push((lower, value.clone()));
    }
    for (name, value) in &h.append {
        let at_h = format!("{at}.append.{name}");
        let lower = check_name(name, &at_h)?;
        check_header(&lower, value, &at_h)?;
        ops.append.push((lower, value.clone()));
    }
    for (i, name) in h.remove.iter().enumerate() {
        let at_h = index_path(&format!("{at}.remove"), i);
        ops.remove.push(check_name(name, &at_h)?);
    }
    Ok(ops)
}

fn check_header(name: &str, value: &str, at: &str) -> Result<(), ConfigError> {
    if !valid_header_name(&name.to_ascii_lowercase()) {
        return Err(ConfigError::new(
            at,
            format!("{name:?} is not a valid header name"),
        ));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ConfigError::new(
            at,
            "header values must not contain CR, LF or NUL",
        ));
    }
    Ok(())
}

/// A regular (non-pseudo) header name made of token characters.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        })
}

fn check_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("cluster name must not be empty".into());
    }
    if name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("invalid cluster name {name:?}"));
    }
    Ok(())
}

/// Route names become metric names, so they are restricted to `[A-Za-z0-9_-]`.
fn check_route_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("route name must be 1 to 64 characters".into());
    }
    if name == "default" {
        return Err("\"default\" is reserved for the default action".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "route name {name:?} may only use letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}
