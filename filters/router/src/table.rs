//! The compiled route table and the routing decision.
//!
//! Exact and prefix routes are indexed (a hash map and a byte trie per case mode), so the cost of
//! finding candidates grows with the path length, not the number of routes. Candidates from the
//! index are merged with the routes the index cannot hold (regex, template, no path) in table
//! order, and the first whose full matcher matches wins.

use std::collections::HashMap;
use switchyard_core::hash::{stable_hash64, unit_interval};
use switchyard_core::matcher::{PathMatcher, Regex, Template};
use switchyard_core::{Captures, Duration, KeySources, Matcher, RequestView};

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: Matcher,
    /// The route's `match` as compact JSON, quoted by the explain header.
    pub match_text: String,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub kind: ActionKind,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone)]
pub enum ActionKind {
    Forward {
        target: Target,
        rewrite: Option<Rewrite>,
        mirror: Option<Mirror>,
    },
    Redirect(Redirect),
    Respond(Respond),
}

#[derive(Debug, Clone)]
pub enum Target {
    Cluster(String),
    Weighted {
        splits: Vec<(String, u32)>,
        total: u64,
        sticky: KeySources,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Replacement path with `{capture}` references.
    pub path_template: Option<String>,
    /// Length of the matched prefix and its replacement.
    pub prefix: Option<(usize, String)>,
    pub regex: Option<(Regex, String)>,
    pub host: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path_template: Option<String>,
    pub prefix: Option<(usize, String)>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub percent: f64,
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

/// Header changes; names are lower-case. Applied in the order remove, set, append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub append: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }
}

/// Which entry of the table decided: a route by index, or the default action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Route(usize),
    Default,
    /// No route matched and there is no default.
    Nothing,
}

/// What the filter must do with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Forward {
        cluster: String,
        /// The new `:path` (with the original query), if rewritten.
        path: Option<String>,
        /// The new `:authority`, if rewritten.
        authority: Option<String>,
        /// The mirror to copy this request to, if sampled.
        mirror: Option<MirrorPlan>,
    },
    Redirect {
        status: u16,
        location: String,
    },
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    NotFound,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorPlan {
    pub cluster: String,
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub matched: Matched,
    pub outcome: Outcome,
    /// Why: the route, its match and the action's choice (only when asked for: building it
    /// allocates on every request).
    pub explain: Option<String>,
}

pub const NOT_FOUND_BODY: &str =
    "switchyard router: no route matches this request and no default is configured\n";

/// Random numbers for unsticky splits and mirror sampling (injected so tests are deterministic).
pub trait Random {
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> Random for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

#[derive(Debug, Clone, Default)]
struct Trie {
    /// Node 0 is the root. Children are kept sorted by byte for binary search.
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    routes: Vec<u32>,
}

impl Trie {
    fn insert(&mut self, key: &[u8], route: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for b in key {
            let next = match self.nodes[at].children.binary_search_by_key(b, |(c, _)| *c) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (*b, id as u32));
                    id
                }
            };
            at = next;
        }
        self.nodes[at].routes.push(route);
    }

    /// Routes whose prefix is a prefix of `path` (`lower`: compare ASCII case-insensitively).
    fn collect(&self, path: &[u8], lower: bool, out: &mut Vec<u32>) {
        let Some(root) = self.nodes.first() else {
            return;
        };
        out.extend_from_slice(&root.routes);
        let mut at = 0usize;
        for b in path {
            let b = if lower { b.to_ascii_lowercase() } else { *b };
            match self.nodes[at]
                .children
                .binary_search_by_key(&b, |(c, _)| *c)
            {
                Ok(i) => at = self.nodes[at].children[i].1 as usize,
                Err(_) => return,
            }
            out.extend_from_slice(&self.nodes[at].routes);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Index {
    exact: HashMap<String, Vec<u32>>,
    exact_lower: HashMap<String, Vec<u32>>,
    prefix: Trie,
    prefix_lower: Trie,
    /// Routes the index cannot hold: always candidates, in table order.
    unindexed: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Table {
    routes: Vec<Route>,
    default: Option<Action>,
    index: Index,
}

impl Table {
    pub fn new(routes: Vec<Route>, default: Option<Action>) -> Self {
        let mut index = Index::default();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            match r.matcher.path_matcher() {
                Some(PathMatcher::Exact { value, ignore_case }) => {
                    let map = if *ignore_case {
                        &mut index.exact_lower
                    } else {
                        &mut index.exact
                    };
                    map.entry(value.clone()).or_default().push(i);
                }
                Some(PathMatcher::Prefix { value, ignore_case }) => {
                    let trie = if *ignore_case {
                        &mut index.prefix_lower
                    } else {
                        &mut index.prefix
                    };
                    trie.insert(value.as_bytes(), i);
                }
                _ => index.unindexed.push(i),
            }
        }
        Table {
            routes,
            default,
            index,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn default_action(&self) -> Option<&Action> {
        self.default.as_ref()
    }

    /// The action for a decision (`None` for [`Matched::Nothing`]).
    pub fn action(&self, m: Matched) -> Option<&Action> {
        match m {
            Matched::Route(i) => self.routes.get(i).map(|r| &r.action),
            Matched::Default => self.default.as_ref(),
            Matched::Nothing => None,
        }
    }

    /// The name used in metrics and the explain header.
    pub fn name(&self, m: Matched) -> &str {
        match m {
            Matched::Route(i) => self.routes.get(i).map(|r| r.name.as_str()).unwrap_or(""),
            Matched::Default => "default",
            Matched::Nothing => "none",
        }
    }

    /// Candidate routes for `path`, in table order.
    fn candidates(&self, path: &str) -> Vec<u32> {
        let mut c: Vec<u32> = Vec::new();
        if let Some(v) = self.index.exact.get(path) {
            c.extend_from_slice(v);
        }
        if !self.index.exact_lower.is_empty() {
            if let Some(v) = self.index.exact_lower.get(&path.to_ascii_lowercase()) {
                c.extend_from_slice(v);
            }
        }
        self.index.prefix.collect(path.as_bytes(), false, &mut c);
        self.index
            .prefix_lower
            .collect(path.as_bytes(), true, &mut c);
        c.extend_from_slice(&self.index.unindexed);
        c.sort_unstable();
        c.dedup();
        c
    }

    /// The first matching route and its captures.
    pub fn find(&self, req: &RequestView) -> Option<(usize, Captures)> {
        for i in self.candidates(req.path()) {
            let i = i as usize;
            if let Some(route) = self.routes.get(i) {
                if let Some(caps) = route.matcher.match_captures(req) {
                    return Some((i, caps));
                }
            }
        }
        None
    }

    /// Decides what to do with `req`; with `explain`, also says why.
    pub fn decide(&self, req: &RequestView, rng: &mut dyn Random, explain: bool) -> Decision {
        let (matched, caps, action) = match self.find(req) {
            Some((i, caps)) => (Matched::Route(i), caps, &self.routes[i].action),
            None => match &self.default {
                Some(a) => (Matched::Default, Captures::default(), a),
                None => {
                    return Decision {
                        matched: Matched::Nothing,
                        outcome: Outcome::NotFound,
                        explain: explain
                            .then(|| "route=none (no route matched, no default) -> 404".into()),
                    }
                }
            },
        };
        let outcome = apply_action(action, req, &caps, rng);
        let explain = explain.then(|| {
            let why = match matched {
                Matched::Route(i) => {
                    let r = &self.routes[i];
                    format!("route={} #{} match={}", r.name, i, r.match_text)
                }
                _ => "route=default (no route matched)".to_string(),
            };
            format!("{why} -> {}", describe(action, &outcome, req))
        });
        Decision {
            matched,
            outcome,
            explain,
        }
    }
}

fn apply_action(
    action: &Action,
    req: &RequestView,
    caps: &Captures,
    rng: &mut dyn Random,
) -> Outcome {
    match &action.kind {
        ActionKind::Forward {
            target,
            rewrite,
            mirror,
        } => {
            let cluster = pick_cluster(target, req, rng);
            let (path, authority) = match rewrite {
                Some(rw) => (rewrite_path(rw, req, caps), rw.host.clone()),
                None => (None, None),
            };
            let mirror = mirror.as_ref().and_then(|m| sample_mirror(m, rng));
            Outcome::Forward {
                cluster,
                path,
                authority,
                mirror,
            }
        }
        ActionKind::Redirect(r) => Outcome::Redirect {
            status: r.status,
            location: redirect_location(r, req, caps),
        },
        ActionKind::Respond(r) => Outcome::Respond {
            status: r.status,
            body: r.body.clone(),
            headers: r.headers.clone(),
        },
    }
}

/// The action's choice in words, for the explain header.
fn describe(action: &Action, outcome: &Outcome, req: &RequestView) -> String {
    match outcome {
        Outcome::Forward {
            cluster,
            path,
            mirror,
            ..
        } => {
            let mut how = match &action.kind {
                ActionKind::Forward {
                    target: Target::Weighted { sticky, total, .. },
                    ..
                } => {
                    match sticky.first_present(req) {
                        Some((i, key)) => {
                            let label = sticky.0.get(i).map(|s| s.label()).unwrap_or_default();
                            let bucket = (unit_interval(stable_hash64(key.as_bytes()))
                                * *total as f64) as u64;
                            format!("weighted {cluster} (sticky on {label}, bucket {bucket} of {total})")
                        }
                        None => format!("weighted {cluster} (random)"),
                    }
                }
                _ => format!("cluster {cluster}"),
            };
            if let Some(p) = path {
                how.push_str(&format!(" path={p}"));
            }
            if let Some(m) = mirror {
                how.push_str(&format!(" mirror={}", m.cluster));
            }
            how
        }
        Outcome::Redirect { status, location } => format!("redirect {status} {location}"),
        Outcome::Respond { status, .. } => format!("respond {status}"),
        Outcome::NotFound => "404".to_string(),
    }
}

/// Chooses the cluster. A sticky split hashes the first present key source, so the same key
/// always lands on the same side while the weights stay the same; without a key, a uniform draw.
pub fn pick_cluster(target: &Target, req: &RequestView, rng: &mut dyn Random) -> String {
    match target {
        Target::Cluster(c) => c.clone(),
        Target::Weighted {
            splits,
            total,
            sticky,
        } => {
            let point = match sticky.first_present(req) {
                Some((_, key)) => unit_interval(stable_hash64(key.as_bytes())),
                None => unit_interval(rng.next_u64()),
            };
            split_at(splits, *total, point)
        }
    }
}

/// The cluster whose cumulative weight range contains `point` in `[0, 1)`.
pub fn split_at(splits: &[(String, u32)], total: u64, point: f64) -> String {
    // Integer bucket in [0, total) so equal weights split exactly.
    let bucket = ((point * total as f64) as u64).min(total.saturating_sub(1));
    let mut acc = 0u64;
    for (c, w) in splits {
        acc += u64::from(*w);
        if bucket < acc {
            return c.clone();
        }
    }
    splits.last().map(|(c, _)| c.clone()).unwrap_or_default()
}

fn sample_mirror(m: &Mirror, rng: &mut dyn Random) -> Option<MirrorPlan> {
    let take = m.percent >= 100.0 || unit_interval(rng.next_u64()) * 100.0 < m.percent;
    take.then(|| MirrorPlan {
        cluster: m.cluster.clone(),
        timeout: m.timeout,
        max_body_bytes: m.max_body_bytes,
    })
}

/// The rewritten `:path` (query preserved), or `None` if the rewrite changes only the host.
pub fn rewrite_path(rw: &Rewrite, req: &RequestView, caps: &Captures) -> Option<String> {
    let path = req.path();
    let new_path = if let Some(t) = &rw.path_template {
        Template::expand(t, caps)
    } else if let Some((len, replacement)) = &rw.prefix {
        replace_prefix(path, *len, replacement)
    } else if let Some((re, sub)) = &rw.regex {
        re.replace(path, sub)?
    } else {
        return None;
    };
    Some(with_query(new_path, req.query_string()))
}

fn replace_prefix(path: &str, len: usize, replacement: &str) -> String {
    let rest = path.get(len..).unwrap_or("");
    format!("{replacement}{rest}")
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The `Location` of a redirect: absolute, built from the request where the redirect is silent.
pub fn redirect_location(r: &Redirect, req: &RequestView, caps: &Captures) -> String {
    let scheme = match (&r.scheme, req.scheme()) {
        (Some(s), _) => s.as_str(),
        (None, "") => "http",
        (None, s) => s,
    };
    let authority = r.host.as_deref().unwrap_or(req.authority());
    let host = match r.port {
        Some(port) => format!("{}:{port}", strip_port(authority)),
        None => authority.to_string(),
    };
    let path = if let Some(t) = &r.path_template {
        Template::expand(t, caps)
    } else if let Some((len, replacement)) = &r.prefix {
        replace_prefix(req.path(), *len, replacement)
    } else {
        req.path().to_string()
    };
    let query = if r.strip_query {
        None
    } else {
        req.query_string()
    };
    with_query(format!("{scheme}://{host}{path}"), query)
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}
