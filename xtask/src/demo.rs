//! `cargo xtask demo [--check]`: three upstreams and one Envoy with every built filter chained on
//! 127.0.0.1:10000, until Ctrl-C (or, with `--check`, until each filter's curl lines ran once).

use crate::build::{self, FILTERS};
use crate::curl_script;
use crate::envoy;
use crate::envoy_config::{self, WasmFilter, DEMO_PORTS, DEMO_SCOPES};
use crate::http;
use crate::procs::Supervisor;
use crate::util::{self, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const UPSTREAM_IDS: [&str; 3] = ["u1", "u2", "u3"];
/// Every demo upstream's latency profile (`--latency`, `--jitter`): a realistic few
/// milliseconds, so that `GET /__latency?factor=20` on one of them makes it a slow host.
const UPSTREAM_LATENCY: [&str; 4] = ["--latency", "5ms", "--jitter", "exp:1ms"];

/// A filter of the demo chain with its curl lines (`None` for a second plugin scope of a
/// filter's module: its lines are in the filter's file).
struct DemoFilter {
    filter: WasmFilter,
    curl: Option<PathBuf>,
}

pub fn demo(check: bool, suite: bool) -> Result<()> {
    // Installed first so a Ctrl-C during startup still stops whatever was started.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    }

    // Checked before the (slow) build to fail fast, and again right before starting.
    ensure_ports_free()?;
    let artifacts = build::build()?;
    let envoy_bin = envoy::ensure(envoy::DEFAULT_VERSION)?;
    ensure_ports_free()?;

    let filters = demo_filters(&artifacts.dist)?;
    if filters.is_empty() {
        eprintln!("xtask: no filter has both dist/<f>.wasm and envoy/demo/<f>.json; Envoy runs without filters");
    }
    let run_dir = util::workspace_root().join("target").join("demo");
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let config_path = run_dir.join("envoy.yaml");
    let chain: Vec<WasmFilter> = if suite {
        suite_chain(&artifacts.dist, &filters)?
    } else {
        filters.iter().map(|f| f.filter.clone()).collect()
    };
    std::fs::write(&config_path, envoy_config::demo_yaml(&chain, &DEMO_PORTS))
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    println!("Envoy configuration: {}", config_path.display());

    let mut children = Supervisor::new();
    for (id, port) in UPSTREAM_IDS.iter().zip(DEMO_PORTS.upstreams) {
        let mut cmd = Command::new(&artifacts.upstream_bin);
        cmd.args(["--id", id, "--listen", &format!("127.0.0.1:{port}")])
            .args(UPSTREAM_LATENCY);
        redirect(&mut cmd, &run_dir.join(format!("{id}.log")))?;
        let pid = children.spawn(&format!("upstream {id}"), cmd)?;
        println!("started upstream {id} on 127.0.0.1:{port} (pid {pid})");
    }
    for port in DEMO_PORTS.upstreams {
        wait_until(
            "upstream",
            &mut children,
            &interrupted,
            Duration::from_secs(20),
            || TcpStream::connect(loopback(port)).is_ok(),
        )?;
    }

    let envoy_log = run_dir.join("envoy.log");
    let mut cmd = Command::new(&envoy_bin);
    cmd.arg("-c").arg(&config_path).args([
        "--concurrency",
        "2",
        "--use-dynamic-base-id",
        "--log-level",
        "info",
    ]);
    redirect(&mut cmd, &envoy_log)?;
    let pid = children.spawn("envoy", cmd)?;
    println!("started envoy (pid {pid}), log: {}", envoy_log.display());
    let admin = loopback(DEMO_PORTS.admin);
    let ready = wait_until(
        "envoy",
        &mut children,
        &interrupted,
        Duration::from_secs(60),
        || matches!(http::get(admin, "/ready"), Ok((200, _))),
    );
    if let Err(e) = ready {
        print_tail(&envoy_log);
        return Err(e);
    }

    let chain_names: Vec<&str> = chain.iter().map(|f| f.name.as_str()).collect();
    println!();
    println!(
        "Switchyard demo on http://127.0.0.1:{} (admin http://127.0.0.1:{})",
        DEMO_PORTS.listener, DEMO_PORTS.admin
    );
    println!(
        "Filter chain: {} -> envoy router",
        display_chain(&chain_names)
    );

    let outcome = if check {
        run_checks(&filters)
    } else {
        print_curl_lines(&filters);
        println!("\nPress Ctrl-C to stop.");
        wait_for_interrupt(&mut children, &interrupted)
    };
    if outcome.is_err() {
        print_tail(&envoy_log);
    }
    children.stop_all();
    outcome
}

/// `--suite`: the suite module (`dist/switchyard.wasm`) with every filter's demo configuration
/// as its stage, verbatim. A second plugin scope `<filter>-<scope>` becomes a second suite
/// plugin `switchyard-<scope>` with that scope's configuration in the filter's place (swapped in
/// on the scope's routes, as the scope plugin is without the suite). The curl lines and their
/// expectations are the same as for the four plugins.
fn suite_chain(dist: &Path, filters: &[DemoFilter]) -> Result<Vec<WasmFilter>> {
    let wasm = dist.join(build::SUITE_MODULE);
    if !wasm.is_file() {
        return Err(format!(
            "{} is missing (`cargo xtask build` builds it)",
            wasm.display()
        ));
    }
    let suite = |name: String, stages: &[(&str, &str)]| {
        let nested: Vec<String> = stages
            .iter()
            .map(|(stage, config)| format!("{stage:?}: {}", config.trim()))
            .collect();
        WasmFilter {
            name,
            wasm: wasm.clone(),
            configuration: format!("{{\"stages\": {{\n{}\n}}}}\n", nested.join(",\n")),
        }
    };
    let stages: Vec<(&str, &str)> = filters
        .iter()
        .filter(|f| FILTERS.contains(&f.filter.name.as_str()))
        .map(|f| (f.filter.name.as_str(), f.filter.configuration.as_str()))
        .collect();
    let mut chain = vec![suite("switchyard".to_owned(), &stages)];
    for (base, scope) in DEMO_SCOPES {
        let scoped = format!("{base}-{scope}");
        let Some(f) = filters.iter().find(|f| f.filter.name == scoped) else {
            continue;
        };
        let swapped: Vec<(&str, &str)> = stages
            .iter()
            .map(|&(stage, config)| {
                if stage == base {
                    (stage, f.filter.configuration.as_str())
                } else {
                    (stage, config)
                }
            })
            .collect();
        chain.push(suite(format!("switchyard-{scope}"), &swapped));
    }
    Ok(chain)
}

fn display_chain(names: &[&str]) -> String {
    if names.is_empty() {
        "(no filters)".to_owned()
    } else {
        names.join(" -> ")
    }
}

/// Every filter in chain order with its built module, demo configuration and curl lines. A
/// missing piece is an error, never a shorter chain: a demo that silently dropped a filter
/// would "pass" without showing it.
fn demo_filters(dist: &Path) -> Result<Vec<DemoFilter>> {
    let demo_dir = util::workspace_root().join("envoy").join("demo");
    let mut found = Vec::new();
    for name in FILTERS {
        let wasm = dist.join(format!("{name}.wasm"));
        let json = demo_dir.join(format!("{name}.json"));
        for needed in [&wasm, &json] {
            if !needed.is_file() {
                return Err(format!(
                    "{name}: {} is missing (`cargo xtask build` builds the modules; every filter needs envoy/demo/{name}.json and .curl)",
                    needed.display()
                ));
            }
        }
        let configuration = read_json(&json)?;
        let curl = demo_dir.join(format!("{name}.curl"));
        found.push(DemoFilter {
            filter: WasmFilter {
                name: name.to_owned(),
                wasm: wasm.clone(),
                configuration,
            },
            curl: if curl.is_file() {
                Some(curl)
            } else {
                return Err(format!("{name}: {} is missing", curl.display()));
            },
        });
        // Second plugin scopes of this module, right after it (see `DEMO_SCOPES`).
        for (_, scope) in DEMO_SCOPES.iter().filter(|(base, _)| *base == name) {
            let scoped = format!("{name}-{scope}");
            let json = demo_dir.join(format!("{scoped}.json"));
            found.push(DemoFilter {
                filter: WasmFilter {
                    name: scoped,
                    wasm: wasm.clone(),
                    configuration: read_json(&json)?,
                },
                curl: None,
            });
        }
    }
    Ok(found)
}

/// A demo configuration file, checked to be JSON (caught here with the file name rather than
/// as a failed VM start in Envoy's log).
fn read_json(json: &Path) -> Result<String> {
    let configuration =
        std::fs::read_to_string(json).map_err(|e| format!("read {}: {e}", json.display()))?;
    serde_json::from_str::<serde_json::Value>(&configuration)
        .map_err(|e| format!("{}: invalid JSON: {e}", json.display()))?;
    Ok(configuration)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ensure_ports_free() -> Result<()> {
    let mut wanted = vec![
        ("the Envoy listener".to_owned(), DEMO_PORTS.listener),
        ("the Envoy admin".to_owned(), DEMO_PORTS.admin),
    ];
    for (id, port) in UPSTREAM_IDS.iter().zip(DEMO_PORTS.upstreams) {
        wanted.push((format!("upstream {id}"), port));
    }
    for (what, port) in wanted {
        // The probe listener is dropped at once; the port is free again for the real owner.
        TcpListener::bind(loopback(port)).map_err(|e| {
            format!("port 127.0.0.1:{port} (for {what}) is taken: {e}; stop whatever uses it")
        })?;
    }
    Ok(())
}

fn redirect(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("dup {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    Ok(())
}

/// Polls `ready` until it holds; fails on timeout, Ctrl-C or a child exiting.
fn wait_until(
    what: &str,
    children: &mut Supervisor,
    interrupted: &AtomicBool,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        children.check_alive()?;
        if interrupted.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready after {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_interrupt(children: &mut Supervisor, interrupted: &AtomicBool) -> Result<()> {
    while !interrupted.load(Ordering::SeqCst) {
        children.check_alive()?;
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nStopping...");
    Ok(())
}

fn print_curl_lines(filters: &[DemoFilter]) {
    for f in filters {
        let Some(curl) = &f.curl else {
            continue;
        };
        println!("\n## {}", f.filter.name);
        match std::fs::read_to_string(curl) {
            Ok(text) => print!("{text}"),
            Err(e) => println!("(cannot read curl lines: {e})"),
        }
    }
}

/// Runs every filter's curl lines once against the running demo, as a user would (pipes and
/// loops included); fails if any command fails one of its expectations (statuses, headers,
/// output: see `curl_script`), so a demo that claims one thing and prints another fails.
fn run_checks(filters: &[DemoFilter]) -> Result<()> {
    let mut failures = 0;
    let mut ran = 1;
    let mut claims = 0;
    // Baseline, whatever the chain: a plain request reaches an upstream through Envoy.
    println!("\n## baseline");
    let baseline = format!(
        "curl -sS -o /dev/null -D - http://127.0.0.1:{}/",
        DEMO_PORTS.listener
    );
    println!("$ {baseline}");
    let outcome = run_line(&baseline).and_then(|out| {
        let responses = curl_script::parse_header_dump(&out);
        match responses.as_slice() {
            [r] => {
                println!("  {} {}", r.status, r.key_headers.join(" | "));
                let from_upstream = r
                    .key_headers
                    .iter()
                    .any(|h| h.to_ascii_lowercase().starts_with("x-upstream-id:"));
                if r.status < 500 && from_upstream {
                    Ok(())
                } else {
                    Err("expected an upstream's answer (status below 500, x-upstream-id)".into())
                }
            }
            other => Err(format!("expected one response, got {}", other.len())),
        }
    });
    if let Err(e) = outcome {
        failures += 1;
        println!("  FAILED: {e}");
    }

    for f in filters {
        let Some(path) = &f.curl else {
            continue;
        };
        println!("\n## {}", f.filter.name);
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let commands = curl_script::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for command in &commands {
            ran += 1;
            claims += command.claims.len() + usize::from(command.expect.is_some());
            println!("$ {}", command.line);
            let outcome = run_line(&command.line).and_then(|out| {
                print_indented(&out);
                curl_script::check(command, &out)
            });
            if let Err(e) = outcome {
                failures += 1;
                println!("  FAILED: {e}");
            }
        }
    }
    println!();
    if failures == 0 {
        println!("demo check passed: {ran} command(s) ran, {claims} expectation(s) held");
        Ok(())
    } else {
        Err(format!(
            "demo check: {failures} of {ran} command(s) failed their expectations"
        ))
    }
}

/// Runs one line with bash and returns its stdout; a non-zero exit (curl failing, or a `grep`
/// in a pipe finding nothing) is a failure.
fn run_line(line: &str) -> Result<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(line)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        print_indented(&stdout);
        Err(format!(
            "exited with {}{}",
            out.status,
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => String::new(),
                err => format!(": {err}"),
            }
        ))
    }
}

/// Prints command output under its command line, shortened to what fits a screen.
fn print_indented(text: &str) {
    const MAX_LINES: usize = 12;
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    for line in lines.iter().take(MAX_LINES) {
        println!("  {line}");
    }
    if lines.len() > MAX_LINES {
        println!("  ... ({} more lines)", lines.len() - MAX_LINES);
    }
}

fn print_tail(log: &Path) {
    const LINES: usize = 40;
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- last lines of {} ---", log.display());
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            eprintln!("{line}");
        }
        eprintln!("---");
    }
}
