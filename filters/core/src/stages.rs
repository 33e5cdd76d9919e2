//! What [`crate::host`] does differently when the filters run as stages of one module (the
//! suite, `dist/switchyard.wasm`) instead of one module each.
//!
//! The stages are the unchanged filter crates, so their glue keeps calling `host::*`. In suite
//! mode those calls are redirected here:
//! - `plugin_configuration` returns the stage's own part of the suite configuration;
//! - `resume_request` does not resume the stream (later stages have not run yet): it records the
//!   context, and the suite runs the remaining stages before it resumes for real;
//! - callout tokens and tick periods are recorded, so the suite hands each answer and tick to the
//!   stage that asked;
//! - the request's header map, its peer address and the clock are read once per callback and
//!   shared by the stages: one lazy request view instead of one per filter. The header copy is
//!   kept in step with the stages' own edits (the routing record, rewrites) and dropped when the
//!   request-header phase ends, so nothing later can read a stale copy.
//!
//! Outside suite mode (the standalone modules, native tests) every function here is inert.

use crate::request::Parts;
use std::cell::RefCell;
use std::rc::Rc;

/// A header list as the host returns it.
pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Default)]
struct State {
    active: bool,
    /// The configuration the stage being configured sees as its plugin configuration.
    config: Option<Vec<u8>>,
    /// The context host calls act on (the one the suite dispatched to, or the last
    /// `set_effective_context`).
    current: u32,
    /// Contexts a stage asked to resume.
    resumes: Vec<u32>,
    /// Contexts a stage answered locally and the suite has not looked at yet.
    replied: Vec<u32>,
    /// Tokens of the callouts sent since the suite last looked.
    dispatched: Vec<u32>,
    /// The tick period a stage asked for since the suite last looked.
    tick: Option<std::time::Duration>,
    /// The request headers of `memo_context`, while its request-header phase runs.
    headers: Option<HeaderList>,
    /// The same, parsed once for every stage's request view while no stage edits them.
    parsed: Option<Rc<Parts>>,
    source: Option<Option<String>>,
    memo_context: u32,
    /// The clock, read at most once per callback.
    now: Option<u64>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Turns suite mode on for this VM (the suite's root context does, once).
pub fn enable() {
    with(|s| s.active = true);
}

/// Whether the filters run as stages of the suite.
pub fn active() -> bool {
    with(|s| s.active)
}

/// Runs `f` (a stage's `on_configure`) with `config` as the plugin configuration it reads.
pub fn with_config<R>(config: Vec<u8>, f: impl FnOnce() -> R) -> R {
    with(|s| s.config = Some(config));
    let r = f();
    with(|s| s.config = None);
    r
}

pub(crate) fn config() -> Option<Vec<u8>> {
    with(|s| if s.active { s.config.clone() } else { None })
}

/// The suite is about to hand a host callback for `context_id` to its stages: host calls act
/// on that context and the clock is read afresh.
pub fn enter(context_id: u32) {
    with(|s| {
        s.current = context_id;
        s.now = None;
    });
}

pub(crate) fn set_current(context_id: u32) {
    with(|s| {
        if s.active {
            s.current = context_id;
        }
    });
}

/// In suite mode, records a resume of the current context and returns `true` (the suite does
/// it after the remaining stages); `false` outside suite mode.
pub(crate) fn defer_resume() -> bool {
    with(|s| {
        if s.active {
            let c = s.current;
            if !s.resumes.contains(&c) {
                s.resumes.push(c);
            }
        }
        s.active
    })
}

/// Queues a resume of `context_id` again (the suite met it while that request's own callback
/// was running).
pub fn defer_resume_of(context_id: u32) {
    with(|s| {
        if !s.resumes.contains(&context_id) {
            s.resumes.push(context_id);
        }
    });
}

pub(crate) fn record_local_reply() {
    with(|s| {
        if s.active && !s.replied.contains(&s.current) {
            let c = s.current;
            s.replied.push(c);
        }
    });
}

/// Whether a stage answered `context_id` locally since the last call.
pub fn take_local_reply(context_id: u32) -> bool {
    with(|s| {
        let before = s.replied.len();
        s.replied.retain(|&c| c != context_id);
        s.replied.len() != before
    })
}

/// Forgets what is left about a finished request.
pub fn forget(context_id: u32) {
    with(|s| {
        s.replied.retain(|&c| c != context_id);
        s.resumes.retain(|&c| c != context_id);
    });
}

/// The contexts stages asked to resume since the last call.
pub fn take_resumes() -> Vec<u32> {
    with(|s| std::mem::take(&mut s.resumes))
}

pub(crate) fn record_dispatch(token: u32) {
    with(|s| {
        if s.active {
            s.dispatched.push(token);
        }
    });
}

/// The tokens of callouts sent since the last call.
pub fn take_dispatched() -> Vec<u32> {
    with(|s| std::mem::take(&mut s.dispatched))
}

/// In suite mode, records a stage's tick period and returns `true` (the suite sets the host's
/// tick to the shortest and hands each stage its own ticks).
pub(crate) fn defer_tick(period: std::time::Duration) -> bool {
    with(|s| {
        if s.active {
            s.tick = Some(period);
        }
        s.active
    })
}

/// The tick period a stage asked for since the last call.
pub fn take_tick() -> Option<std::time::Duration> {
    with(|s| s.tick.take())
}

/// The clock for this callback: `read` is called at most once per [`enter`] in suite mode.
pub(crate) fn now(read: impl FnOnce() -> u64) -> u64 {
    let memo = with(|s| if s.active { s.now } else { None });
    if let Some(n) = memo {
        return n;
    }
    let n = read();
    with(|s| {
        if s.active {
            s.now = Some(n);
        }
    });
    n
}

/// Starts sharing the current context's request headers between stages (the suite calls it as
/// the request-header phase starts or resumes).
pub fn share_request_headers() {
    with(|s| {
        s.memo_context = s.current;
        s.headers = None;
        s.parsed = None;
        s.source = None;
    });
}

/// Stops sharing them (the request-header phase is over or paused).
pub fn end_request_headers() {
    with(|s| {
        s.headers = None;
        s.parsed = None;
        s.source = None;
        s.memo_context = 0;
    });
}

fn sharing(s: &State) -> bool {
    s.active && s.memo_context != 0 && s.memo_context == s.current
}

/// The request headers: the shared copy when there is one, else `read()` (kept as the shared
/// copy while the request-header phase runs).
pub(crate) fn request_headers(read: impl FnOnce() -> HeaderList) -> HeaderList {
    if let Some(h) = with(|s| if sharing(s) { s.headers.clone() } else { None }) {
        return h;
    }
    let h = read();
    with(|s| {
        if sharing(s) {
            s.headers = Some(h.clone());
        }
    });
    h
}

/// Whether request views are shared right now (suite mode, inside a request-header phase).
pub(crate) fn sharing_views() -> bool {
    with(|s| sharing(s))
}

/// The parsed request for a stage's view: the shared parse when there is one, else `parse()`
/// (kept as the shared parse until a stage edits the request headers).
pub(crate) fn parsed_request(parse: impl FnOnce() -> Rc<Parts>) -> Rc<Parts> {
    if let Some(p) = with(|s| if sharing(s) { s.parsed.clone() } else { None }) {
        return p;
    }
    let p = parse();
    with(|s| {
        if sharing(s) {
            s.parsed = Some(Rc::clone(&p));
        }
    });
    p
}

/// One request header from the shared copy: `None` when there is no shared copy (ask the
/// host), `Some(None)` when the request has no such header.
pub(crate) fn shared_request_header(name: &str) -> Option<Option<Vec<u8>>> {
    with(|s| {
        if !sharing(s) {
            return None;
        }
        let list = s.headers.as_ref()?;
        Some(
            list.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                .map(|(_, v)| v.clone()),
        )
    })
}

/// The downstream address, read once per shared request-header phase.
pub(crate) fn source_address(read: impl FnOnce() -> Option<String>) -> Option<String> {
    if let Some(a) = with(|s| if sharing(s) { s.source.clone() } else { None }) {
        return a;
    }
    let a = read();
    with(|s| {
        if sharing(s) {
            s.source = Some(a.clone());
        }
    });
    a
}

/// How a stage changed a request header.
pub(crate) enum Edit<'a> {
    Set(&'a [u8]),
    Remove,
    Add(&'a [u8]),
}

/// Keeps the shared copy in step with a stage's edit of the request headers (the host map
/// itself is edited by the caller).
pub(crate) fn edit_request_header(name: &str, edit: Edit<'_>) {
    with(|s| {
        if !sharing(s) {
            return;
        }
        // The next stage parses the edited request again.
        s.parsed = None;
        let Some(list) = s.headers.as_mut() else {
            return;
        };
        apply_edit(list, name, edit);
    });
}

fn apply_edit(list: &mut HeaderList, name: &str, edit: Edit<'_>) {
    let same = |k: &[u8]| k.eq_ignore_ascii_case(name.as_bytes());
    match edit {
        Edit::Set(v) => {
            let mut seen = false;
            list.retain_mut(|(k, val)| {
                if !same(k) {
                    return true;
                }
                if seen {
                    return false;
                }
                seen = true;
                *val = v.to_vec();
                true
            });
            if !seen {
                list.push((name.as_bytes().to_ascii_lowercase(), v.to_vec()));
            }
        }
        Edit::Remove => list.retain(|(k, _)| !same(k)),
        Edit::Add(v) => list.push((name.as_bytes().to_ascii_lowercase(), v.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn edits_keep_the_shared_copy_like_the_host_map() {
        let mut h = list(&[(":path", "/a"), ("x", "1"), ("x", "2"), ("y", "3")]);
        apply_edit(&mut h, ":path", Edit::Set(b"/b"));
        apply_edit(&mut h, "X", Edit::Set(b"9"));
        apply_edit(&mut h, "z", Edit::Add(b"4"));
        apply_edit(&mut h, "y", Edit::Remove);
        assert_eq!(h, list(&[(":path", "/b"), ("x", "9"), ("z", "4")]));
    }

    #[test]
    fn outside_suite_mode_nothing_is_shared_or_deferred() {
        assert!(!defer_resume());
        assert!(!defer_tick(std::time::Duration::from_secs(1)));
        let mut reads = 0;
        for _ in 0..2 {
            request_headers(|| {
                reads += 1;
                Vec::new()
            });
        }
        assert_eq!(reads, 2);
        assert!(config().is_none());
    }

    #[test]
    fn in_suite_mode_headers_clock_and_resumes_are_shared_per_callback() {
        // Thread-local state: this test owns its thread.
        std::thread::spawn(|| {
            enable();
            enter(7);
            share_request_headers();
            let mut reads = 0;
            for _ in 0..3 {
                request_headers(|| {
                    reads += 1;
                    list(&[(":path", "/a")])
                });
            }
            assert_eq!(reads, 1);
            // Every stage's view shares one parse until a stage edits the headers.
            let parse = || Rc::new(Parts::from_list(request_headers(Vec::new)));
            let (p1, p2) = (parsed_request(parse), parsed_request(parse));
            assert!(Rc::ptr_eq(&p1, &p2));
            edit_request_header("x-switchyard-cluster", Edit::Set(b"canary"));
            let p3 = parsed_request(parse);
            assert!(!Rc::ptr_eq(&p1, &p3));
            let view =
                crate::request::RequestView::lazy_parsed(Box::new(move || Rc::clone(&p3)), || None);
            assert_eq!(view.header("x-switchyard-cluster"), Some(&b"canary"[..]));
            let h = request_headers(Vec::new);
            assert_eq!(
                h,
                list(&[(":path", "/a"), ("x-switchyard-cluster", "canary")])
            );
            end_request_headers();
            assert!(request_headers(Vec::new).is_empty());

            let mut clock = 0;
            let a = now(|| {
                clock += 1;
                100
            });
            let b = now(|| {
                clock += 1;
                200
            });
            assert_eq!((a, b, clock), (100, 100, 1));
            enter(8);
            assert_eq!(now(|| 300), 300);

            assert!(defer_resume());
            assert!(defer_resume());
            assert_eq!(take_resumes(), vec![8]);
            assert!(take_resumes().is_empty());
            assert_eq!(with_config(b"{}".to_vec(), config), Some(b"{}".to_vec()));
            assert!(config().is_none());
        })
        .join()
        .unwrap();
    }
}
