//! The Docker deliverables. The project's docker-compose.yml end to end: bring the stack up
//! (Envoy with all four filters, upstreams u1-u3), run one smoke scenario per filter through
//! the published ports, tear it down (also when an assertion fails) and check nothing is left
//! behind. And the filter OCI images (`switchyard/<filter>:<version>`, Istio `WasmPlugin`
//! layout).
//!
//! Needs a Docker engine, `docker compose` v2 and the offline images (`cargo xtask images`).
//! Images: `ENVOY_IMAGE` (default here `switchyard/envoy:1.40.0`, the one `cargo xtask images`
//! builds; the compose file's own default is the official image), the upstream image that
//! `cargo xtask images` builds. Nothing is pulled (`--pull never`).
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
        let env = vec![
            ("ENVOY_IMAGE".to_string(), envoy_image),
            ("SWITCHYARD_HTTP_PORT".to_string(), http.clone()),
            ("SWITCHYARD_ADMIN_PORT".to_string(), admin.clone()),
            ("SWITCHYARD_SUITE_HTTP_PORT".to_string(), suite_http.clone()),
            (
                "SWITCHYARD_SUITE_ADMIN_PORT".to_string(),
                suite_admin.clone(),
            ),
            ("SWITCHYARD_U1_PORT".to_string(), port()),
            ("SWITCHYARD_U2_PORT".to_string(), port()),
            ("SWITCHYARD_U3_PORT".to_string(), port()),
        ];
        let stack = Stack {
            project: format!("switchyard-test-{}", std::process::id()),
            file: root.join("docker-compose.yml"),
            env,
            http: format!("127.0.0.1:{http}").parse().expect("address"),
            admin: format!("127.0.0.1:{admin}").parse().expect("address"),
            suite_http: format!("127.0.0.1:{suite_http}").parse().expect("address"),
            suite_admin: format!("127.0.0.1:{suite_admin}").parse().expect("address"),
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
        self.wait_envoy_ready(self.http, self.admin);
        self.wait_envoy_ready(self.suite_http, self.suite_admin);
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

#[test]
fn compose_stack_runs_every_filter_and_leaves_nothing_behind() {
    if docker_deselected() {
        return;
    }
    require_docker();
    let mut stack = Stack::up();
    stack.wait_ready();

    every_filter_works(stack.http, "four plugins");
    every_filter_works(stack.suite_http, "the suite module");

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
