//! One request's stages and how they run: in chain order, stopping at a pause or a local reply,
//! and resuming from the stage after the one that paused.

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use switchyard_core::{host, stages};

thread_local! {
    /// The live requests' pipelines, so a root callback (a cache waiter woken by a tick) can
    /// run the rest of a paused request's stages.
    pub(super) static PIPELINES: RefCell<HashMap<u32, Weak<RefCell<Pipeline>>>> = RefCell::new(HashMap::new());
}

fn pipeline(context_id: u32) -> Option<Rc<RefCell<Pipeline>>> {
    PIPELINES.with(|p| p.borrow().get(&context_id).and_then(Weak::upgrade))
}

/// Runs the remaining stages of every request a stage asked to resume, until none is left.
pub(super) fn run_resumes() {
    loop {
        let resumes = stages::take_resumes();
        if resumes.is_empty() {
            return;
        }
        for context_id in resumes {
            match pipeline(context_id) {
                Some(p) => match p.try_borrow_mut() {
                    Ok(mut p) => p.resume(),
                    // Its own callback is running: it picks the resume up when the stage returns.
                    Err(_) => stages::defer_resume_of(context_id),
                },
                None => {
                    if host::set_effective_context(context_id) {
                        host::resume_request_now();
                    }
                }
            }
        }
    }
}

/// One request's stages.
pub(super) struct Pipeline {
    pub(super) context_id: u32,
    pub(super) stages: Vec<Box<dyn HttpContext>>,
    /// Callout tokens → the stage that sent them.
    pub(super) tokens: HashMap<u32, usize>,
    /// The stage that paused the request-header phase, while it waits.
    pub(super) paused_at: Option<usize>,
    /// `on_http_request_headers`' arguments, for the stages that run after a resume.
    pub(super) headers_args: (usize, bool),
}

impl Pipeline {
    fn adopt_tokens(&mut self, i: usize) {
        for token in stages::take_dispatched() {
            self.tokens.insert(token, i);
        }
    }

    /// Whether a stage asked to resume this request (other requests' resumes stay queued).
    fn take_own_resume(&self) -> bool {
        let mut own = false;
        for c in stages::take_resumes() {
            if c == self.context_id {
                own = true;
            } else {
                stages::defer_resume_of(c);
            }
        }
        own
    }

    /// Runs the request-header phase from stage `from`: `Pause` if a stage paused or replied.
    pub(super) fn request_headers_from(&mut self, from: usize) -> Action {
        stages::share_request_headers();
        let (n, eos) = self.headers_args;
        let mut i = from;
        let action = loop {
            let Some(stage) = self.stages.get_mut(i) else {
                break Action::Continue;
            };
            let action = stage.on_http_request_headers(n, eos);
            self.adopt_tokens(i);
            if stages::take_local_reply(self.context_id) {
                break Action::Pause;
            }
            if action != Action::Continue && !self.take_own_resume() {
                self.paused_at = Some(i);
                break Action::Pause;
            }
            i += 1;
        };
        stages::end_request_headers();
        action
    }

    /// A paused stage asked to resume: run the stages after it, then resume the stream.
    fn resume(&mut self) {
        let Some(i) = self.paused_at.take() else {
            return;
        };
        if !host::set_effective_context(self.context_id) {
            return;
        }
        stages::enter(self.context_id);
        if self.request_headers_from(i + 1) == Action::Continue {
            host::resume_request_now();
        }
    }

    /// Hands a callback to the stages in `order`, stopping at the first that pauses.
    pub(super) fn each(
        &mut self,
        order: impl Iterator<Item = usize>,
        mut f: impl FnMut(&mut dyn HttpContext) -> Action,
    ) -> Action {
        stages::enter(self.context_id);
        for i in order {
            let Some(stage) = self.stages.get_mut(i) else {
                continue;
            };
            let action = f(stage.as_mut());
            self.adopt_tokens(i);
            if action != Action::Continue {
                return action;
            }
        }
        Action::Continue
    }

    /// The stages that have seen the request headers (all, unless one paused or replied).
    pub(super) fn request_side(&self) -> std::ops::Range<usize> {
        0..self.paused_at.map_or(self.stages.len(), |i| i + 1)
    }

    pub(super) fn answer(&mut self, token: u32, f: impl FnOnce(&mut dyn HttpContext)) {
        let Some(i) = self.tokens.remove(&token) else {
            return;
        };
        stages::enter(self.context_id);
        if let Some(stage) = self.stages.get_mut(i) {
            f(stage.as_mut());
        }
        self.adopt_tokens(i);
        if self.take_own_resume() {
            if self.paused_at == Some(i) {
                self.resume();
            } else {
                // Not paused by this stage (or no longer): resuming is the host's business.
                host::resume_request_now();
            }
        }
    }
}
