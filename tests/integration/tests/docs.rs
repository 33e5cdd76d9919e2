//! The documentation tells the truth about the repository: every relative link (and its
//! `#anchor`) resolves, every `cargo xtask <command>` it mentions exists, and the README's
//! per-filter examples are configurations the filters accept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use switchyard_harness::workspace_root;

/// Every Markdown page of the project (not `target/`, `dist/` or dot directories).
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "dist" || name == "node_modules"
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace_root(), &mut out);
    out.sort();
    assert!(out.len() >= 10, "found only {out:?}");
    out
}

/// Text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut fence = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if !fence {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `[text](target)` targets in Markdown prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower-case, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fence = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
        }
        if !fence && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The commands `cargo xtask` knows, from its usage text.
fn xtask_commands() -> BTreeSet<String> {
    let main = std::fs::read_to_string(workspace_root().join("xtask/src/main.rs")).unwrap();
    let usage = main
        .split_once("commands:")
        .and_then(|(_, rest)| rest.split_once("environment:"))
        .map(|(commands, _)| commands)
        .expect("xtask's USAGE lists `commands:` then `environment:`");
    usage
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_xtask_command_the_docs_mention_exists() {
    let known = xtask_commands();
    for c in [
        "build", "test", "demo", "bench", "images", "envoy", "tools", "fuzz",
    ] {
        assert!(known.contains(c), "usage parsing lost `{c}`: {known:?}");
    }
    let mut unknown = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("cargo xtask ") {
            rest = &rest[i + "cargo xtask ".len()..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if word.is_empty() || word.starts_with('-') {
                continue; // `cargo xtask <command>` placeholders, flags
            }
            if !known.contains(&word) {
                unknown.push(format!("{}: cargo xtask {word}", page.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown commands:\n{}",
        unknown.join("\n")
    );
}

/// A filter crate's `validate_config`.
type Validate = fn(&[u8]) -> Result<(), switchyard_core::ConfigError>;

/// The README's `json` examples, in order: ratelimit, router, cache, hashring.
#[test]
fn the_readme_examples_are_accepted_by_their_filters() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let examples: Vec<&str> = readme
        .split("```json\n")
        .skip(1)
        .filter_map(|b| b.split_once("\n```").map(|(json, _)| json))
        .collect();
    assert_eq!(examples.len(), 4, "one example per filter");
    let validators: [(&str, Validate); 4] = [
        ("ratelimit", switchyard_ratelimit::validate_config),
        ("router", switchyard_router::validate_config),
        ("cache", switchyard_cache::validate_config),
        ("hashring", switchyard_hashring::validate_config),
    ];
    for ((name, validate), json) in validators.iter().zip(&examples) {
        if let Err(e) = validate(json.as_bytes()) {
            panic!("the README's {name} example is rejected: {e}\n{json}");
        }
    }
}
