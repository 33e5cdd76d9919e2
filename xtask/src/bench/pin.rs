//! CPU pinning for the proxy and memory benchmarks. On a machine with two or more CPUs, Envoy
//! gets one CPU to itself and everything else the benchmark starts (xtask, the load generator,
//! the upstream servers) runs on the others. Without it the load generator and the upstreams
//! preempt Envoy on the same cores and Envoy's CPU per request moves by ±30 % between rounds of
//! the same variant; with it Envoy is the only busy process on its core.

use crate::util::Result;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// The CPU Envoy runs on.
    pub envoy: usize,
    /// The CPUs of everything else.
    pub others: Vec<usize>,
}

/// Splits `allowed` CPUs: the last one for Envoy, the rest for the others. `None` with fewer
/// than two CPUs (nothing to separate).
pub fn split(allowed: &[usize]) -> Option<Pinning> {
    let (&envoy, others) = allowed.split_last()?;
    (!others.is_empty()).then(|| Pinning {
        envoy,
        others: others.to_vec(),
    })
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

fn set_of(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET is given indices below
    // CPU_SETSIZE (they come from sched_getaffinity).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Restricts the calling thread to `cpus`. Called on the main thread before starting threads or
/// processes, they inherit the mask: `set_self(&p.others)` before a benchmark, and
/// `set_self(&allowed_cpus)` after it.
pub fn set_self(cpus: &[usize]) -> Result<()> {
    let set = set_of(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Makes `cmd` run on Envoy's CPU.
pub fn pin_command(cmd: &mut Command, p: &Pinning) {
    let set = set_of(&[p.envoy]);
    // SAFETY: the closure only calls sched_setaffinity, which is async-signal-safe, between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// How the report describes the CPU placement.
pub fn describe(p: Option<&Pinning>) -> String {
    match p {
        Some(p) => format!(
            "Envoy pinned to CPU {}, load generator and upstreams to CPU {:?}",
            p.envoy, p.others
        ),
        None => "no CPU pinning".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_gets_the_last_cpu_and_one_cpu_is_not_split() {
        assert_eq!(
            split(&[0, 1]),
            Some(Pinning {
                envoy: 1,
                others: vec![0]
            })
        );
        assert_eq!(
            split(&[2, 5, 7]),
            Some(Pinning {
                envoy: 7,
                others: vec![2, 5]
            })
        );
        assert_eq!(split(&[3]), None);
        assert_eq!(split(&[]), None);
    }

    #[test]
    fn a_pinned_child_runs_only_on_envoys_cpu() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let Some(p) = split(&allowed) else {
            println!("one CPU: nothing to pin");
            return;
        };
        let mut cmd = Command::new("grep");
        cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
        pin_command(&mut cmd, &p);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split(':').nth(1).map(str::trim),
            Some(p.envoy.to_string().as_str()),
            "{text}"
        );
    }
}
