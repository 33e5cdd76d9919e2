//! The Docker deliverables. The project's docker-compose.yml end to end: bring the stack up
//! (Envoys with all four filters, upstreams u1-u3, the rate limit service and its Redis), run
//! one smoke scenario per filter through the published ports, spread one client over the three
//! Envoys and check the global limit admits exactly its limit, tear it down (also when an
//! assertion fails) and check nothing is left behind. And the images: the filter OCI images
//! (`switchyard/<filter>:<version>`, Istio `WasmPlugin` layout), `switchyard/rls` and
//! `switchyard/redis`.
//!
//! Needs a Docker engine, `docker compose` v2 and the offline images (`cargo xtask images`).
//! Images: `ENVOY_IMAGE` (default here `switchyard/envoy:1.40.0`, the one `cargo xtask images`
//! builds; the compose file's own default is the official image), `RLS_IMAGE` (default
//! `switchyard/rls:<version>`), `REDIS_IMAGE` (default `switchyard/redis:7.0`), the upstream
//! image that `cargo xtask images` builds. Nothing is pulled (`--pull never`).
//! Without Docker the test fails saying how to enable it; `SWITCHYARD_SKIP_DOCKER=1` deselects
//! it explicitly (with a loud notice).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use switchyard_harness::{free_port, wait_until, workspace_root};
use switchyard_integration::*;

/// The stack's Envoy image when `ENVOY_IMAGE` is not set: the offline one.
const OFFLINE_ENVOY_IMAGE: &str = "switchyard/envoy:1.40.0";

/// The Redis image when `REDIS_IMAGE` is not set (`cargo xtask images` builds it).
const OFFLINE_REDIS_IMAGE: &str = "switchyard/redis:7.0";

/// The `global-per-user` rule's limit: envoy/compose-rls.yaml, 5 requests a minute per user.
const GLOBAL_LIMIT: usize = 5;

fn rls_image() -> String {
    format!("switchyard/rls:{}", env!("CARGO_PKG_VERSION"))
}

fn docker_deselected() -> bool {
    let skip = std::env::var("SWITCHYARD_SKIP_DOCKER").is_ok_and(|v| !v.is_empty() && v != "0");
    if skip {
        eprintln!(
            "!!! SWITCHYARD_SKIP_DOCKER is set: the docker compose test did NOT run (deselected)."
        );
    }
    skip
}

fn docker() -> Command {
    let mut cmd = Command::new("docker");
    // The classic builder: no buildx plugin needed, nothing fetched.
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd.env("COMPOSE_DOCKER_CLI_BUILD", "0");
    cmd.stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}\n{HOW_TO_ENABLE}"),
    }
}

const HOW_TO_ENABLE: &str =
    "To run the Docker tests: install Docker (Debian: `apt-get install docker.io`) and the \
compose v2 plugin (docs/docker.md), start the engine (`dockerd`; check `docker info`), then run \
`cargo xtask images`. To deselect them explicitly: SWITCHYARD_SKIP_DOCKER=1.";

fn require_docker() {
    let info = output(docker().args(["info", "--format", "{{.ServerVersion}}"]));
    assert!(
        info.status.success(),
        "Docker engine not reachable: {}\n{HOW_TO_ENABLE}",
        String::from_utf8_lossy(&info.stderr).trim()
    );
    let compose = output(docker().args(["compose", "version"]));
    assert!(
        compose.status.success(),
        "`docker compose` (v2) is not installed: {}\n{HOW_TO_ENABLE}",
        String::from_utf8_lossy(&compose.stderr).trim()
    );
}

/// A running compose project; `down` on drop, so a failing assertion still tears it down.
struct Stack {
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    http: SocketAddr,
    admin: SocketAddr,
    /// `envoy-suite`: the same filters as stages of the suite module.
    suite_http: SocketAddr,
    suite_admin: SocketAddr,
    /// `envoy-b`: a second Envoy with `envoy`'s configuration.
    b_http: SocketAddr,
    b_admin: SocketAddr,
    /// `rls`: the rate limit service's /healthz /readyz /metrics.
    rls_http: SocketAddr,
    torn_down: bool,
}

impl Stack {
    fn up() -> Stack {
        let root = workspace_root();
        let envoy_image =
            std::env::var("ENVOY_IMAGE").unwrap_or_else(|_| OFFLINE_ENVOY_IMAGE.to_string());
        let port = || free_port().expect("free port").to_string();
        let (http, admin) = (port(), port());
        let (suite_http, suite_admin) = (port(), port());
        let (b_http, b_admin, rls_http) = (port(), port(), port());
        let image = |var: &str, default: String| {
            let image = std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or(default);
            (var.to_string(), image)
        };
        let addr =
            |port: &str| -> SocketAddr { format!("127.0.0.1:{port}").parse().expect("address") };
        let env = vec![
            ("ENVOY_IMAGE".to_string(), envoy_image),
            image("RLS_IMAGE", rls_image()),
            image("REDIS_IMAGE", OFFLINE_REDIS_IMAGE.to_string()),
            ("SWITCHYARD_HTTP_PORT".to_string(), http.clone()),
            ("SWITCHYARD_ADMIN_PORT".to_string(), admin.clone()),
            ("SWITCHYARD_SUITE_HTTP_PORT".to_string(), suite_http.clone()),
            (
                "SWITCHYARD_SUITE_ADMIN_PORT".to_string(),
                suite_admin.clone(),
            ),
            ("SWITCHYARD_B_HTTP_PORT".to_string(), b_http.clone()),
            ("SWITCHYARD_B_ADMIN_PORT".to_string(), b_admin.clone()),
            ("SWITCHYARD_RLS_HTTP_PORT".to_string(), rls_http.clone()),
            ("SWITCHYARD_U1_PORT".to_string(), port()),
            ("SWITCHYARD_U2_PORT".to_string(), port()),
            ("SWITCHYARD_U3_PORT".to_string(), port()),
        ];
        let stack = Stack {
            project: format!("switchyard-test-{}", std::process::id()),
            file: root.join("docker-compose.yml"),
            env,
            http: addr(&http),
            admin: addr(&admin),
            suite_http: addr(&suite_http),
            suite_admin: addr(&suite_admin),
            b_http: addr(&b_http),
            b_admin: addr(&b_admin),
            rls_http: addr(&rls_http),
            torn_down: false,
        };
        // From here on, Drop tears down whatever came up.
        let out = output(stack.compose().args(["up", "--detach", "--pull", "never"]));
        assert!(
            out.status.success(),
            "`docker compose up` failed:\n{}\n(images missing? run `cargo xtask images`; \
             network 10.213.7.0/24 taken? stop other switchyard stacks with `docker compose down`)",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    fn compose(&self) -> Command {
        let mut cmd = docker();
        cmd.arg("compose")
            .arg("--file")
            .arg(&self.file)
            .arg("--project-name")
            .arg(&self.project);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn wait_ready(&self) {
        // rls is ready when its Redis answers PING.
        wait_until(
            "rls answers /readyz with 200 through its published port",
            Duration::from_secs(60),
            || {
                Request::new(self.rls_http, "GET", "/readyz")
                    .timeout(Duration::from_secs(2))
                    .try_send()
                    .is_ok_and(|r| r.status == 200)
            },
        );
        for (http, admin) in self.envoys().map(|(_, http, admin)| (http, admin)) {
            self.wait_envoy_ready(http, admin);
        }
    }

    /// Every Envoy of the stack: (service name, listener, admin).
    fn envoys(&self) -> [(&'static str, SocketAddr, SocketAddr); 3] {
        [
            ("envoy", self.http, self.admin),
            ("envoy-b", self.b_http, self.b_admin),
            ("envoy-suite", self.suite_http, self.suite_admin),
        ]
    }

    fn wait_envoy_ready(&self, http: SocketAddr, admin: SocketAddr) {
        let get = |path: &str| get(http, path);
        wait_until(
            "Envoy in the compose stack answers /ready",
            Duration::from_secs(120),
            || {
                Request::new(admin, "GET", "/ready")
                    .timeout(Duration::from_secs(2))
                    .try_send()
                    .is_ok_and(|r| r.status == 200)
            },
        );
        // The upstreams start independently of Envoy: wait until each answers through it.
        wait_until(
            "u1, u2 and u3 answer through Envoy",
            Duration::from_secs(60),
            || {
                // users → u3, the canary → u2, search → u1.
                get("/users/0").try_send().is_ok_and(|r| r.status == 200)
                    && get("/search").try_send().is_ok_and(|r| r.status == 200)
                    && get("/api/x")
                        .header("x-canary", "always")
                        .try_send()
                        .is_ok_and(|r| r.status == 200)
            },
        );
    }

    /// Containers and networks of this project still known to Docker.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for kind in [["ps", "-a"], ["network", "ls"]] {
            let out = output(docker().args(kind).args(["--quiet", "--filter", &label]));
            left.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{} {l}", kind[0])),
            );
        }
        left
    }

    fn down(&mut self) -> Output {
        self.torn_down = true;
        output(
            self.compose()
                .args(["down", "--volumes", "--remove-orphans", "--timeout", "5"]),
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        if std::thread::panicking() {
            let logs = output(self.compose().args(["logs", "--no-color", "--tail", "60"]));
            eprintln!(
                "--- docker compose logs ---\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let out = self.down();
        if !out.status.success() {
            eprintln!(
                "docker compose down failed for project {}: {}",
                self.project,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn get(http: SocketAddr, path: &str) -> Request {
    Request::new(http, "GET", path).timeout(Duration::from_secs(10))
}

/// What each filter does, through the Envoy at `http` (`envoy` runs the four plugins,
/// `envoy-suite` the suite module with the same configurations).
fn every_filter_works(http: SocketAddr, what: &str) {
    eprintln!("compose: checking every filter through {what} ({http})");
    // ratelimit: /limited allows 2 requests a minute per client, then 429 with Retry-After.
    let statuses: Vec<u16> = (0..3)
        .map(|_| get(http, "/limited/orders").send().status)
        .collect();
    assert_eq!(statuses, [200, 200, 429], "rate limit statuses");
    let limited = get(http, "/limited/orders").send();
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some(), "{limited:?}");
    assert_eq!(get(http, "/open").send().status, 200, "unlimited route");

    // cache: a cacheable response is a MISS, then a HIT served without the upstream.
    let path = format!(
        "/compose/cache/{}?header=Cache-Control:max-age%3D60",
        std::process::id()
    );
    let first = get(http, &path).send();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-cache"), Some("MISS"), "{first:?}");
    let second = get(http, &path).send();
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-cache"), Some("HIT"), "{second:?}");
    assert_eq!(second.body, first.body, "a hit replays the stored body");

    // hashring: one key always reaches the same upstream; different keys spread out.
    let pick = |user: &str| {
        let resp = get(http, "/hash").header("x-user-id", user).send();
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.upstream()
            .unwrap_or_else(|| panic!("no x-upstream-id: {resp:?}"))
            .to_string()
    };
    let alice = pick("alice");
    for _ in 0..10 {
        assert_eq!(pick("alice"), alice, "alice moved to another upstream");
    }
    let spread: BTreeSet<String> = (0..30).map(|i| pick(&format!("user-{i}"))).collect();
    assert!(spread.len() >= 2, "30 keys all on {spread:?}");

    // router: the header canary always goes to api-v2 (u2); /users/{id} to users (u3).
    for _ in 0..5 {
        let canary = get(http, "/api/orders").header("x-canary", "always").send();
        assert_eq!(canary.status, 200);
        assert_eq!(canary.upstream(), Some("u2"), "{canary:?}");
    }
    let users = get(http, "/users/42").send();
    assert_eq!(users.upstream(), Some("u3"), "{users:?}");
    assert_eq!(users.header("x-served-by"), Some("users"));
    assert_eq!(users.json()["path"], "/v1/users/42", "rewritten path");
}

/// The sum of an Envoy's `global_failure_*` counters (the `global-per-user` rule's calls that
/// the service did not answer in time, or at all, and that its failure_mode decided).
/// `global-per-user.<stat>` of the Envoy at `admin`.
fn global_stat(admin: SocketAddr, stat: &str) -> u64 {
    let stats = get(admin, &format!("/stats?filter=global-per-user.{stat}$")).send();
    assert_eq!(stats.status, 200, "{stats:?}");
    let text = stats.text();
    text.lines()
        .find(|l| l.contains(&format!("global-per-user.{stat}:")))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stat global-per-user.{stat} at {admin}:\n{text}"))
}

fn global_failures(admin: SocketAddr) -> u64 {
    let stats = get(admin, "/stats?filter=global_failure_").send();
    assert_eq!(stats.status, 200, "{stats:?}");
    let text = stats.text();
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("global-per-user.global_failure_"))
        .map(|l| {
            l.rsplit(':')
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("stat line {l:?}"))
        })
        .collect();
    assert_eq!(
        values.len(),
        2,
        "global_failure_allowed/_denied of global-per-user at {admin}:\n{text}"
    );
    values.iter().sum()
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// One client (one `x-user-id`) spread over `envoy`, `envoy-b` and `envoy-suite`: the
/// `global-per-user` rule (5 a minute, counted by `rls` in Redis) admits exactly 5 in total,
/// then answers 429 with `Retry-After` on every Envoy. Returns the admitted count.
fn global_limit_is_shared(stack: &Stack) -> usize {
    let envoys = stack.envoys();
    let pid = std::process::id();
    // Warm-up: each Envoy's HTTP/2 connection to rls, and rls's script in Redis, with users of
    // their own, until an answer of the service (its RateLimit headers) comes back.
    let mut warm = 0;
    for (name, http, _) in envoys {
        wait_until(
            &format!("{name} gets answers from rls"),
            Duration::from_secs(60),
            || {
                warm += 1;
                get(http, "/global/warm-up")
                    .header("x-user-id", format!("warm-{pid}-{warm}"))
                    .try_send()
                    .is_ok_and(|r| {
                        r.status == 200
                            && r.header("ratelimit-policy")
                                .is_some_and(|p| p.contains("global-per-user"))
                    })
            },
        );
    }

    // The counters are fixed windows aligned to the minute (Redis's clock, the same kernel
    // clock as here): a run must not cross a minute boundary, and must not contain calls that
    // the rule's failure_mode decided (50 ms timeout on a loaded machine). Such a run proves
    // nothing about the shared counter: it is repeated with a new user, up to three times.
    let requests = 3 * GLOBAL_LIMIT;
    let mut attempts = Vec::new();
    for attempt in 1..=3 {
        let remembered_before: u64 = envoys
            .iter()
            .map(|e| global_stat(e.2, "global_denied_remembered"))
            .sum();
        let second = unix_seconds() % 60;
        if second >= 45 {
            std::thread::sleep(Duration::from_secs(61 - second));
        }
        let failures_before: u64 = envoys.iter().map(|e| global_failures(e.2)).sum();
        let window = unix_seconds() / 60;
        let user = format!("compose-global-{pid}-{attempt}");
        let answers: Vec<(&str, u16, Option<String>)> = (0..requests)
            .map(|i| {
                let (name, http, _) = envoys[i % envoys.len()];
                let r = get(http, &format!("/global/orders/{i}"))
                    .header("x-user-id", &user)
                    .send();
                (name, r.status, r.header("retry-after").map(str::to_string))
            })
            .collect();
        let failures: u64 =
            envoys.iter().map(|e| global_failures(e.2)).sum::<u64>() - failures_before;
        let crossed = unix_seconds() / 60 != window;
        if failures > 0 || crossed {
            eprintln!(
                "compose: global limit attempt {attempt} does not count ({failures} failure-mode \
                 decisions, crossed a minute boundary: {crossed}): {answers:?}"
            );
            attempts.push(answers);
            continue;
        }
        let admitted = answers.iter().filter(|a| a.1 == 200).count();
        let statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
        let mut expected = vec![200; GLOBAL_LIMIT];
        expected.resize(requests, 429);
        assert_eq!(
            statuses, expected,
            "one user over three Envoys: exactly {GLOBAL_LIMIT} admitted, then 429: {answers:?}"
        );
        for (name, _, retry_after) in &answers[GLOBAL_LIMIT..] {
            let secs: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name}: 429 without a Retry-After: {answers:?}"));
            assert!(
                (1..=60).contains(&secs),
                "{name}: Retry-After {secs} is not within the minute window"
            );
        }
        // Each Envoy both admitted and rejected this user's requests.
        for (name, _, _) in envoys {
            assert!(answers.iter().any(|a| a.0 == name && a.1 == 200), "{name}");
            assert!(answers.iter().any(|a| a.0 == name && a.1 == 429), "{name}");
        }
        eprintln!(
            "compose: global limit: {admitted} of {requests} admitted (limit {GLOBAL_LIMIT}) \
             over envoy, envoy-b and envoy-suite; attempt {attempt}"
        );

        // Every rejection was the service's answer, or a worker's memory of it (until the
        // reset the service reported, a worker rejects the key without asking again).
        let remembered: u64 = envoys
            .iter()
            .map(|e| global_stat(e.2, "global_denied_remembered"))
            .sum::<u64>()
            - remembered_before;
        let metrics = get(stack.rls_http, "/metrics").send();
        assert_eq!(metrics.status, 200);
        let over_limit: u64 = metrics
            .text()
            .lines()
            .find(|l| l.starts_with("switchyard_rls_over_limit_total{domain=\"switchyard\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no over_limit metric:\n{}", metrics.text()));
        assert!(
            over_limit >= 1 && over_limit + remembered >= (requests - GLOBAL_LIMIT) as u64,
            "rls over_limit_total {over_limit}, remembered by the workers {remembered}"
        );
        return admitted;
    }
    panic!("no clean global limit run in 3 attempts: {attempts:?}");
}

#[test]
fn compose_stack_runs_every_filter_and_leaves_nothing_behind() {
    if docker_deselected() {
        return;
    }
    require_docker();
    let mut stack = Stack::up();
    stack.wait_ready();

    every_filter_works(stack.http, "four plugins");
    every_filter_works(stack.b_http, "four plugins, envoy-b");
    every_filter_works(stack.suite_http, "the suite module");
    assert_eq!(global_limit_is_shared(&stack), GLOBAL_LIMIT);

    let out = stack.down();
    assert!(
        out.status.success(),
        "docker compose down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stack.leftovers(), Vec::<String>::new(), "left behind");
}

/// `cargo xtask images` builds one image per filter in the layout Istio's `WasmPlugin`
/// accepts: a single layer holding only `/plugin.wasm`, the module from `dist/`.
#[test]
fn filter_images_hold_exactly_the_plugin_module() {
    if docker_deselected() {
        return;
    }
    require_docker();
    let version = env!("CARGO_PKG_VERSION");
    let scratch =
        std::env::temp_dir().join(format!("switchyard-image-check-{}", std::process::id()));
    // (image name, module in dist/): the suite image holds dist/switchyard.wasm.
    for (name, filter) in [
        ("ratelimit", "ratelimit"),
        ("cache", "cache"),
        ("router", "router"),
        ("hashring", "hashring"),
        ("suite", "switchyard"),
    ] {
        let image = format!("switchyard/{name}:{version}");
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let archive = dir.join("image.tar");
        let save = output(
            docker()
                .arg("save")
                .arg("--output")
                .arg(&archive)
                .arg(&image),
        );
        assert!(
            save.status.success(),
            "{image} missing (run `cargo xtask images`): {}",
            String::from_utf8_lossy(&save.stderr)
        );
        let tar = |args: &[&str]| -> Vec<u8> {
            let out = output(Command::new("tar").current_dir(&dir).args(args));
            assert!(
                out.status.success(),
                "tar {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        tar(&["-xf", "image.tar"]);
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json")).expect("manifest.json in the image archive"),
        )
        .expect("manifest JSON");
        let layers = manifest[0]["Layers"].as_array().expect("layers").clone();
        assert_eq!(layers.len(), 1, "{image}: {layers:?}");
        let layer = layers[0].as_str().expect("layer path");
        let listing = String::from_utf8(tar(&["-tf", layer])).expect("listing");
        assert_eq!(listing.trim(), "plugin.wasm", "{image} layer contents");
        let module = tar(&["-xOf", layer, "plugin.wasm"]);
        let dist = switchyard_harness::wasm_path(filter);
        assert!(
            module == std::fs::read(&dist).expect("dist module"),
            "{image}: /plugin.wasm is not {} (rebuild with `cargo xtask images`)",
            dist.display()
        );
    }
    std::fs::remove_dir_all(&scratch).expect("remove scratch dir");
}

/// `docker run --rm IMAGE ARGS` (no network), its exit status and stdout+stderr.
fn run_image(image: &str, args: &[&str]) -> (bool, String) {
    let out = output(
        docker()
            .args(["run", "--rm", "--network", "none", image])
            .args(args),
    );
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn image_user(image: &str) -> String {
    let out = output(docker().args(["image", "inspect", "--format", "{{.Config.User}}", image]));
    assert!(
        out.status.success(),
        "{image} missing (run `cargo xtask images`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `switchyard/rls` runs the service binary as uid 65532 (k8s/base/rls.yaml's runAsUser), and
/// `switchyard/redis` runs Redis 7.0 (both binaries) as the official image's uid 999.
#[test]
fn rls_and_redis_images_run() {
    if docker_deselected() {
        return;
    }
    require_docker();
    let rls = rls_image();
    assert_eq!(image_user(&rls), "65532:65532", "{rls}");
    let (ok, text) = run_image(&rls, &["--help"]);
    assert!(ok, "{rls} --help: {text}");
    assert!(
        text.contains("usage: switchyard-rls --config FILE"),
        "{text}"
    );
    // The image's own configuration path, checked with a file the compose stack mounts.
    let limits = workspace_root().join("envoy/compose-rls.yaml");
    let out = output(
        docker()
            .args(["run", "--rm", "--network", "none", "--volume"])
            .arg(format!(
                "{}:/etc/switchyard-rls/limits.yaml:ro",
                limits.display()
            ))
            .args([
                &rls,
                "--config",
                "/etc/switchyard-rls/limits.yaml",
                "--check",
            ]),
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 domain(s) OK"),
        "{rls} --check envoy/compose-rls.yaml: {out:?}"
    );

    let redis = OFFLINE_REDIS_IMAGE;
    assert_eq!(image_user(redis), "999:999", "{redis}");
    let (ok, text) = run_image(redis, &["redis-server", "--version"]);
    assert!(
        ok && text.contains("v=7.0."),
        "{redis} redis-server --version: {text}"
    );
    let (ok, text) = run_image(redis, &["redis-cli", "--version"]);
    assert!(
        ok && text.contains("redis-cli 7.0."),
        "{redis} redis-cli --version: {text}"
    );
}
