//! Child processes the demo starts: each in its own process group (so a terminal Ctrl-C reaches
//! only xtask, which then stops them in order), killed by PID, and tied to xtask's lifetime.

use crate::util::Result;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long a child gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

pub struct Supervisor {
    children: Vec<(String, Child)>,
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            children: Vec::new(),
        }
    }

    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<u32> {
        cmd.process_group(0);
        // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If xtask dies without cleaning up (SIGKILL), the kernel stops the child.
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {name} ({:?}): {e}", cmd.get_program()))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Fails naming the first child that has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{name} exited unexpectedly ({status})"));
            }
        }
        Ok(())
    }

    /// SIGTERM to every child (newest first), then waits; SIGKILL after the grace period.
    pub fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.children.pop() {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            let pid = child.id();
            if !terminate(&mut child, GRACE) {
                eprintln!("xtask: {name} (pid {pid}) ignored SIGTERM; killed it");
            }
            println!("stopped {name} (pid {pid})");
        }
    }
}

/// SIGTERM to `child`, then waits up to `grace`; SIGKILL after that. Returns whether it exited
/// on SIGTERM.
pub fn terminate(child: &mut Child, grace: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child's PID, which is not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_all();
    }
}
