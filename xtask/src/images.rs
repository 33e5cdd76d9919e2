//! `cargo xtask images`: every container image the project uses, built with no registry.
//!
//! - `debian:bookworm-slim`, only when it is not already present: `debootstrap --variant=minbase
//!   bookworm` + `docker import` (the root filesystem tarball is cached in `target/tools/`).
//! - `switchyard/envoy:<envoy version>` from the pinned Envoy binary (`docker/envoy/Dockerfile`).
//! - `switchyard/upstream:<version>`, the upstream test server (`docker/upstream/Dockerfile`).
//! - `switchyard/rls:<version>`, the global rate limit service `switchyard-rls`
//!   (`docker/rls/Dockerfile`; k8s/base/rls.yaml and docker-compose.yml run it).
//! - `switchyard/redis:7.0` for the compose stack: the host's Debian `redis-server` and
//!   `redis-cli` plus the shared libraries the base lacks (`docker/redis/Dockerfile`).
//! - `switchyard/<filter>:<version>` per filter: `FROM scratch` + `/plugin.wasm`, the layout
//!   Istio's `WasmPlugin` accepts (`k8s/images/Dockerfile.filter`), and `switchyard/suite` holding
//!   the suite module `dist/switchyard.wasm` the same way.
//!
//! Build contexts are staged under `target/docker/` so that only the needed files are sent to
//! the engine (the workspace's `target/` is gigabytes). docker-compose.yml builds the upstream,
//! rls and redis images from the same staged contexts when they are missing.

use crate::build::{self, Artifacts};
use crate::docker;
use crate::envoy;
use crate::util::{self, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The base image every local image builds on; the Dockerfiles' `BASE_IMAGE` default.
pub const BASE_IMAGE: &str = "debian:bookworm-slim";

/// Project version: the tag of the upstream and filter images.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The Envoy image the harness's container backend and the compose test use.
pub fn envoy_image() -> String {
    format!("switchyard/envoy:{}", envoy::DEFAULT_VERSION)
}

pub fn upstream_image() -> String {
    format!("switchyard/upstream:{VERSION}")
}

/// The global rate limit service (`services/rls`).
pub fn rls_image() -> String {
    format!("switchyard/rls:{VERSION}")
}

/// The Redis release the compose stack runs (switchyard-rls is tested with 7.0; Debian
/// bookworm's `redis-server` is 7.0.x).
pub const REDIS_VERSION: &str = "7.0";

/// Redis for the compose stack, from the host's `redis-server`.
pub fn redis_image() -> String {
    format!("switchyard/redis:{REDIS_VERSION}")
}

pub fn filter_image(filter: &str) -> String {
    format!("switchyard/{filter}:{VERSION}")
}

/// `cargo xtask images`: builds the filters, the upstream server and Envoy first.
pub fn images() -> Result<()> {
    // Fail before minutes of building when there is no engine to build for (installing and
    // starting one first where this machine allows it; an engine started here stops at the end).
    let _engine = match docker::provide() {
        docker::Engine::Ready(own) => own,
        docker::Engine::Unavailable(why) => return Err(why),
    };
    let artifacts = build::build()?;
    let envoy_bin = envoy::ensure(envoy::DEFAULT_VERSION)?;
    build_images(&artifacts, &envoy_bin)
}

/// Builds every image from already built artifacts.
pub fn build_images(artifacts: &Artifacts, envoy_bin: &Path) -> Result<()> {
    docker::require_engine()?;
    let base = std::env::var("BASE_IMAGE")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| BASE_IMAGE.to_owned());
    if base == BASE_IMAGE {
        ensure_debian_base()?;
    } else if !docker::image_exists(&base) {
        return Err(format!(
            "BASE_IMAGE={base} is not a local image (unset BASE_IMAGE to build {BASE_IMAGE} offline)"
        ));
    }

    let root = util::workspace_root();
    let staging = root.join("target").join("docker");

    let envoy_ctx = stage(
        &staging.join("envoy"),
        &[
            (envoy_bin.to_path_buf(), "envoy"),
            (root.join("docker/envoy/Dockerfile"), "Dockerfile"),
            (
                root.join("docker/envoy/docker-entrypoint.sh"),
                "docker-entrypoint.sh",
            ),
        ],
    )?;
    docker_build(&envoy_ctx, &envoy_image(), &[("BASE_IMAGE", &base)])?;

    let upstream_ctx = stage(
        &staging.join("upstream"),
        &[
            (artifacts.upstream_bin.clone(), build::UPSTREAM_PACKAGE),
            (root.join("docker/upstream/Dockerfile"), "Dockerfile"),
        ],
    )?;
    docker_build(&upstream_ctx, &upstream_image(), &[("BASE_IMAGE", &base)])?;

    let rls_ctx = stage(
        &staging.join("rls"),
        &[
            (artifacts.rls_bin.clone(), build::RLS_PACKAGE),
            (root.join("docker/rls/Dockerfile"), "Dockerfile"),
        ],
    )?;
    docker_build(&rls_ctx, &rls_image(), &[("BASE_IMAGE", &base)])?;

    let mut redis_files = redis_binaries()?;
    for file in ["Dockerfile", "docker-entrypoint.sh"] {
        redis_files.push((root.join("docker/redis").join(file), file.to_owned()));
    }
    let redis_refs: Vec<(PathBuf, &str)> = redis_files
        .iter()
        .map(|(from, to)| (from.clone(), to.as_str()))
        .collect();
    let redis_ctx = stage(&staging.join("redis"), &redis_refs)?;
    docker_build(&redis_ctx, &redis_image(), &[("BASE_IMAGE", &base)])?;

    // Dockerfile.filter copies `dist/${FILTER}.wasm`: the staged context mirrors that layout.
    let mut filter_files = vec![(
        root.join("k8s/images/Dockerfile.filter"),
        "Dockerfile".to_owned(),
    )];
    for filter in build::FILTERS {
        filter_files.push((
            artifacts.dist.join(format!("{filter}.wasm")),
            format!("dist/{filter}.wasm"),
        ));
    }
    filter_files.push((
        artifacts.dist.join(build::SUITE_MODULE),
        format!("dist/{}", build::SUITE_MODULE),
    ));
    let filter_refs: Vec<(PathBuf, &str)> = filter_files
        .iter()
        .map(|(from, to)| (from.clone(), to.as_str()))
        .collect();
    let filter_ctx = stage(&staging.join("filters"), &filter_refs)?;
    for filter in build::FILTERS {
        docker_build(&filter_ctx, &filter_image(filter), &[("FILTER", filter)])?;
    }
    // The suite: `switchyard/suite`, holding dist/switchyard.wasm.
    docker_build(
        &filter_ctx,
        &filter_image("suite"),
        &[("FILTER", "switchyard")],
    )?;

    println!("Images:");
    for image in [envoy_image(), upstream_image(), rls_image(), redis_image()]
        .into_iter()
        .chain(build::FILTERS.iter().map(|f| filter_image(f)))
        .chain([filter_image("suite")])
    {
        println!("  {image}");
    }
    Ok(())
}

/// `debian:bookworm-slim` from debootstrap, unless an image of that name exists already (a
/// pulled official one is as good).
fn ensure_debian_base() -> Result<()> {
    if docker::image_exists(BASE_IMAGE) {
        println!("Base image {BASE_IMAGE}: present");
        return Ok(());
    }
    let tarball = util::tools_dir().join("debian-bookworm-minbase.tar");
    if !tarball.is_file() {
        let started = std::time::Instant::now();
        println!(
            "==> building {BASE_IMAGE} with debootstrap (downloads about 40 MB of Debian packages; under a minute to a few)"
        );
        debootstrap(&tarball)?;
        println!("==> debootstrap done in {}s", started.elapsed().as_secs());
    }
    util::run(docker().args([
        "import",
        "--change",
        "CMD [\"bash\"]",
        &tarball.to_string_lossy(),
        BASE_IMAGE,
    ]))?;
    println!(
        "Base image {BASE_IMAGE}: imported from {}",
        tarball.display()
    );
    Ok(())
}

/// A minimal Debian bookworm root filesystem as a tarball (root and `debootstrap` needed).
fn debootstrap(tarball: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "building {BASE_IMAGE} with debootstrap needs root (run `cargo xtask images` as root once, \
             or load a {BASE_IMAGE} image another way)"
        ));
    }
    let parent = tarball
        .parent()
        .ok_or_else(|| format!("no parent directory for {}", tarball.display()))?;
    let rootfs = parent.join("debian-bookworm-rootfs");
    remove_dir(&rootfs)?;
    let mut cmd = Command::new("debootstrap");
    cmd.args(["--variant=minbase", "bookworm"]).arg(&rootfs);
    if let Some(mirror) = std::env::var_os("DEBIAN_MIRROR").filter(|m| !m.is_empty()) {
        cmd.arg(mirror);
    }
    util::run(&mut cmd).map_err(|e| {
        format!("{e} (is debootstrap installed? Debian: `apt-get install debootstrap`)")
    })?;
    // Downloaded packages and package lists are not needed in the image.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        clear_files(&rootfs.join(dir))?;
    }
    let partial = tarball.with_extension("tar.partial");
    util::run(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("--numeric-owner")
            .arg("-cf")
            .arg(&partial)
            .arg("."),
    )?;
    std::fs::rename(&partial, tarball)
        .map_err(|e| format!("rename {} to {}: {e}", partial.display(), tarball.display()))?;
    remove_dir(&rootfs)
}

/// The host's `redis-server` and `redis-cli` (symlinks resolved) and every shared library they
/// load, as (file, name in the build context): `redis-server`, `redis-cli`, `lib/<soname>`.
/// docker/redis/Dockerfile installs the libraries the base image lacks. Installs the Debian
/// package first when it is missing and this run may (root with apt-get), as `cargo xtask test`
/// does for the service tests.
fn redis_binaries() -> Result<Vec<(PathBuf, String)>> {
    crate::redis::ensure()
        .map_err(|e| format!("{e} (needed to build {} offline)", redis_image()))?;
    let mut files = Vec::new();
    let mut libs: Vec<(String, PathBuf)> = Vec::new();
    for tool in ["redis-server", "redis-cli"] {
        let found = util::output(Command::new("sh").args(["-c", &format!("command -v {tool}")]))
            .map_err(|e| {
                format!("{tool} is not on PATH ({e}); Debian: `apt-get install redis-server`")
            })?;
        let found = PathBuf::from(found.trim());
        let path = canonical(&found)?;
        if tool == "redis-server" {
            // By the name found on PATH: Debian's redis-server is a symlink to redis-check-rdb,
            // and the binary picks its mode from the name it was started as.
            let version = util::output(Command::new(&found).arg("--version"))?;
            let wanted = format!("v={REDIS_VERSION}.");
            if !version.contains(&wanted) {
                return Err(format!(
                    "{} is built from the host's redis-server, but that is `{}`, not {REDIS_VERSION}.x \
                     (Debian bookworm's redis-server is 7.0); point docker compose at another Redis \
                     {REDIS_VERSION} image with REDIS_IMAGE instead",
                    redis_image(),
                    version.trim()
                ));
            }
        }
        let ldd = util::output(Command::new("ldd").arg(&path))?;
        for (soname, lib) in
            shared_libraries(&ldd).map_err(|e| format!("ldd {}: {e}", path.display()))?
        {
            if !libs.iter().any(|(name, _)| *name == soname) {
                libs.push((soname, canonical(&lib)?));
            }
        }
        files.push((path, tool.to_owned()));
    }
    files.extend(
        libs.into_iter()
            .map(|(soname, lib)| (lib, format!("lib/{soname}"))),
    );
    Ok(files)
}

/// The libraries in `ldd` output, as (soname, path). Lines without `=>` (the vDSO, the dynamic
/// loader) are skipped: the base image's glibc provides the loader. A library `ldd` cannot find
/// is an error.
fn shared_libraries(ldd: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut libs = Vec::new();
    for line in ldd.lines() {
        let Some((name, rest)) = line.split_once("=>") else {
            continue;
        };
        let name = name.trim();
        let path = rest.split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            return Err(format!("{name} not found"));
        }
        libs.push((name.to_owned(), PathBuf::from(path)));
    }
    Ok(libs)
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(|e| format!("resolve {}: {e}", path.display()))
}

fn docker() -> Command {
    docker::docker()
}

fn docker_build(context: &Path, tag: &str, args: &[(&str, &str)]) -> Result<()> {
    let mut cmd = docker();
    cmd.args(["build", "--tag", tag]);
    for (name, value) in args {
        cmd.arg("--build-arg").arg(format!("{name}={value}"));
    }
    cmd.arg(context);
    let started = std::time::Instant::now();
    println!("==> building image {tag}");
    util::run(&mut cmd)?;
    println!("==> image {tag} built in {}s", started.elapsed().as_secs());
    Ok(())
}

/// Fills `dir` with exactly `files` (source, name in the context); reuses unchanged files.
fn stage(dir: &Path, files: &[(PathBuf, &str)]) -> Result<PathBuf> {
    remove_dir(dir)?;
    for (from, name) in files {
        if !from.is_file() {
            return Err(format!(
                "{} is missing (run `cargo xtask build` / `cargo xtask envoy`)",
                from.display()
            ));
        }
        let to = dir.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        // A hard link saves copying Envoy's ~100 MB on every run; copy across file systems.
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)
                .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        }
    }
    Ok(dir.to_path_buf())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

fn clear_files(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_documented_names() {
        assert_eq!(envoy_image(), "switchyard/envoy:1.40.0");
        assert_eq!(upstream_image(), format!("switchyard/upstream:{VERSION}"));
        assert_eq!(
            filter_image("ratelimit"),
            format!("switchyard/ratelimit:{VERSION}")
        );
    }

    #[test]
    fn stage_copies_exactly_the_listed_files() {
        let tmp = std::env::temp_dir().join(format!("xtask-stage-{}", std::process::id()));
        let src = tmp.join("src.bin");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(&src, b"payload").unwrap();
        let ctx = tmp.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("stale"), b"old").unwrap();
        stage(&ctx, &[(src.clone(), "dist/x.wasm")]).unwrap();
        assert_eq!(std::fs::read(ctx.join("dist/x.wasm")).unwrap(), b"payload");
        assert!(!ctx.join("stale").exists());
        let missing = stage(&ctx, &[(tmp.join("nope"), "y")]).unwrap_err();
        assert!(missing.contains("cargo xtask build"), "{missing}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn tags_of_the_global_limit_images() {
        assert_eq!(rls_image(), format!("switchyard/rls:{VERSION}"));
        assert_eq!(redis_image(), "switchyard/redis:7.0");
        // docker-compose.yml's defaults are these tags.
        let compose_file =
            std::fs::read_to_string(util::workspace_root().join("docker-compose.yml")).unwrap();
        assert!(compose_file.contains(&format!("${{RLS_IMAGE:-{}}}", rls_image())));
        assert!(compose_file.contains(&format!("${{REDIS_IMAGE:-{}}}", redis_image())));
        assert!(compose_file.contains(&format!("${{UPSTREAM_IMAGE:-{}}}", upstream_image())));
    }

    #[test]
    fn ldd_output_gives_every_library_and_fails_on_a_missing_one() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f61)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f62)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f63)\n";
        assert_eq!(
            shared_libraries(ldd).unwrap(),
            vec![
                (
                    "libjemalloc.so.2".to_owned(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libjemalloc.so.2")
                ),
                (
                    "libc.so.6".to_owned(),
                    PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6")
                ),
            ]
        );
        let missing = shared_libraries("\tliblzf.so.1 => not found\n").unwrap_err();
        assert!(missing.contains("liblzf.so.1"), "{missing}");
    }

    /// The compose stack's ratelimit configuration is envoy/demo/ratelimit.json plus exactly
    /// this rule, appended to `rules`: the global limit that `envoy`, `envoy-b` and
    /// `envoy-suite` share through the `rls` service (the demo runs no rate limit service).
    const COMPOSE_GLOBAL_RULE: &str = r#"    {
      "name": "global-per-user",
      "scope": "global",
      "match": {"path": {"prefix": "/global"}},
      "key": [{"literal": "global"}, {"header": "x-user-id"}],
      "service": {"cluster": "rls", "domain": "switchyard", "timeout": "50ms",
                  "failure_mode": "allow", "descriptor_keys": ["generic_key", "user"]}
    }"#;

    /// envoy/demo/ratelimit.json with [`COMPOSE_GLOBAL_RULE`] appended to its `rules`.
    fn with_compose_global_rule(demo: &str) -> String {
        let tail = "    }\n  ]\n}";
        let demo = demo.trim_end();
        assert!(
            demo.ends_with(tail),
            "envoy/demo/ratelimit.json no longer ends with its rules list; update this test"
        );
        let head = &demo[..demo.len() - tail.len()];
        let combined = format!("{head}    }},\n{COMPOSE_GLOBAL_RULE}\n  ]\n}}\n");
        // Still one JSON document whose last rule is the global one.
        let parsed: serde_json::Value = serde_json::from_str(&combined).unwrap();
        let rules = parsed["rules"].as_array().unwrap();
        assert_eq!(rules.last().unwrap()["name"], "global-per-user");
        assert_eq!(rules.last().unwrap()["scope"], "global");
        combined
    }

    /// The global rule's pieces exist in the stack: the `rls` cluster in both Envoy
    /// configurations, the service with its limits of domain `switchyard`, and `envoy-b`
    /// running envoy/compose.yaml.
    #[test]
    fn compose_global_rule_has_its_service_in_the_stack() {
        let root = util::workspace_root();
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
        let compose_file = read("docker-compose.yml");
        for config in ["envoy/compose.yaml", "envoy/compose-suite.yaml"] {
            let text = read(config);
            assert!(text.contains("  - name: rls\n"), "{config}: no cluster rls");
            assert!(
                text.contains("socket_address: { address: rls, port_value: 8081 }"),
                "{config}: cluster rls does not point at the rls service's gRPC port"
            );
            assert!(text.contains("http2_protocol_options"), "{config}");
        }
        let limits = read("envoy/compose-rls.yaml");
        assert!(limits.contains("  - domain: switchyard\n"), "{limits}");
        assert!(limits.contains("value: global"), "{limits}");
        assert!(limits.contains("- key: user"), "{limits}");
        for needle in [
            "./envoy/compose-rls.yaml:/etc/switchyard-rls/limits.yaml:ro",
            "  envoy-b:\n",
            "  rls:\n",
            "  redis:\n",
            "${SWITCHYARD_B_HTTP_PORT:-10002}",
            "${SWITCHYARD_B_ADMIN_PORT:-9903}",
        ] {
            assert!(
                compose_file.contains(needle),
                "docker-compose.yml lacks {needle:?}"
            );
        }
        // envoy and envoy-b both mount envoy/compose.yaml.
        assert_eq!(
            compose_file
                .matches("./envoy/compose.yaml:/etc/envoy/envoy.yaml:ro")
                .count(),
            2
        );
    }

    /// envoy/compose.yaml inlines envoy/demo/<f>.json; only the hashring hosts differ (the
    /// compose network's fixed upstream IPs instead of the demo's loopback ports), and the
    /// ratelimit configuration has [`COMPOSE_GLOBAL_RULE`] appended.
    #[test]
    fn compose_envoy_config_carries_the_demo_filter_configs() {
        let root = util::workspace_root();
        let compose = std::fs::read_to_string(root.join("envoy/compose.yaml")).unwrap();
        let compose_file = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
        let suite = std::fs::read_to_string(root.join("envoy/compose-suite.yaml")).unwrap();
        assert!(suite.contains("/etc/switchyard/dist/switchyard.wasm"));
        assert!(compose_file.contains("./envoy/compose-suite.yaml:/etc/envoy/envoy.yaml"));
        for filter in build::FILTERS {
            let mut demo =
                std::fs::read_to_string(root.join(format!("envoy/demo/{filter}.json"))).unwrap();
            if filter == "ratelimit" {
                demo = with_compose_global_rule(&demo);
            }
            if filter == "hashring" {
                for (demo_addr, compose_addr) in [
                    ("127.0.0.1:8081", "10.213.7.11:8080"),
                    ("127.0.0.1:8082", "10.213.7.12:8080"),
                    ("127.0.0.1:8083", "10.213.7.13:8080"),
                ] {
                    assert!(demo.contains(demo_addr), "demo hashring lost {demo_addr}");
                    demo = demo.replace(demo_addr, compose_addr);
                    let ip = compose_addr.trim_end_matches(":8080");
                    assert!(
                        compose_file.contains(&format!("ipv4_address: {ip}")),
                        "docker-compose.yml does not give an upstream {ip}"
                    );
                }
            }
            let indented = |by: usize| -> String {
                let lines: Vec<String> = demo
                    .trim_end()
                    .lines()
                    .filter(|l| by == 20 || !l.is_empty())
                    .map(|l| {
                        if l.is_empty() {
                            String::new()
                        } else {
                            format!("{:by$}{l}", "")
                        }
                    })
                    .collect();
                lines.join("\n")
            };
            assert!(
                compose.contains(&indented(20)),
                "envoy/compose.yaml does not carry envoy/demo/{filter}.json"
            );
            // The suite's Envoy: the same configuration as the stage of that name.
            assert!(
                suite.contains(&format!("{:22}\"{filter}\":\n{}", "", indented(24))),
                "envoy/compose-suite.yaml does not carry envoy/demo/{filter}.json as stages.{filter}"
            );
            assert!(compose.contains(&format!("/etc/switchyard/dist/{filter}.wasm")));
        }
    }
}
