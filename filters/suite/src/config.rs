//! The suite configuration: `{"stages": {"<filter>": <that filter's configuration>, ...}}`.

use switchyard_core::ConfigError;

/// A stage of the suite, in chain order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    RateLimit,
    Router,
    Cache,
    Hashring,
}

impl Stage {
    /// Every stage, in the documented chain order.
    pub const ORDER: [Stage; 4] = [
        Stage::RateLimit,
        Stage::Router,
        Stage::Cache,
        Stage::Hashring,
    ];

    /// The key under `stages` (and the standalone module's name).
    pub fn name(self) -> &'static str {
        match self {
            Stage::RateLimit => "ratelimit",
            Stage::Router => "router",
            Stage::Cache => "cache",
            Stage::Hashring => "hashring",
        }
    }

    fn validate(self, json: &[u8]) -> Result<(), ConfigError> {
        match self {
            Stage::RateLimit => switchyard_ratelimit::validate_config(json),
            Stage::Router => switchyard_router::validate_config(json),
            Stage::Cache => switchyard_cache::validate_config(json),
            Stage::Hashring => switchyard_hashring::validate_config(json),
        }
    }
}

/// The stages to run, in chain order, each with its own configuration as JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteConfig {
    pub stages: Vec<(Stage, Vec<u8>)>,
}

/// Parses the suite configuration and validates every stage's configuration with its filter's
/// own parser; errors name the full JSON path (`stages.cache.max_bytes`).
pub fn parse(json: &[u8]) -> Result<SuiteConfig, ConfigError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ConfigError::new("", format!("not valid JSON: {e}")))?;
    let top = value
        .as_object()
        .ok_or_else(|| ConfigError::new("", "expected an object with a `stages` object"))?;
    if let Some(unknown) = top.keys().find(|k| k.as_str() != "stages") {
        return Err(ConfigError::new(
            unknown.as_str(),
            "unknown field; the suite configuration has only `stages`",
        ));
    }
    let stages = top
        .get("stages")
        .ok_or_else(|| ConfigError::new("stages", "missing: name the stages to run"))?
        .as_object()
        .ok_or_else(|| {
            ConfigError::new(
                "stages",
                "expected an object: {\"<filter>\": <its configuration>}",
            )
        })?;
    if let Some(unknown) = stages
        .keys()
        .find(|k| !Stage::ORDER.iter().any(|s| s.name() == k.as_str()))
    {
        return Err(ConfigError::new(
            format!("stages.{unknown}"),
            "unknown stage; expected ratelimit, router, cache or hashring",
        ));
    }
    let mut out = Vec::new();
    for stage in Stage::ORDER {
        let Some(cfg) = stages.get(stage.name()) else {
            continue;
        };
        let bytes = serde_json::to_vec(cfg)
            .map_err(|e| ConfigError::new(format!("stages.{}", stage.name()), format!("{e}")))?;
        stage
            .validate(&bytes)
            .map_err(|e| e.under(&format!("stages.{}", stage.name())))?;
        out.push((stage, bytes));
    }
    if out.is_empty() {
        return Err(ConfigError::new("stages", "name at least one stage"));
    }
    Ok(SuiteConfig { stages: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_run_in_chain_order_whatever_the_json_order() {
        let c = parse(
            br#"{"stages": {"hashring": {"hosts": [{"address": "10.0.0.1:80"}], "hash_key": [{"header": "x-user"}]},
                            "ratelimit": {"rules": [{"name": "all", "key": [{"header": "x-user"}], "limits": [{"requests": 5, "per": "1s"}]}]}}}"#,
        );
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let names: Vec<_> = c.stages.iter().map(|(s, _)| s.name()).collect();
        assert_eq!(names, ["ratelimit", "hashring"]);
    }

    #[test]
    fn a_nested_error_names_the_full_json_path() {
        let e = parse(br#"{"stages": {"cache": {"max_bytes": "lots"}}}"#).unwrap_err();
        assert!(e.path.starts_with("stages.cache"), "{e}");
        assert!(e.to_string().contains("max_bytes"), "{e}");
        let e = parse(br#"{"stages": {"cache": {"max_bytes": 1024, "nope": 1}}}"#).unwrap_err();
        assert!(e.to_string().starts_with("stages.cache"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn unknown_stages_fields_and_empty_suites_are_rejected() {
        let e = parse(br#"{"stages": {"waf": {}}}"#).unwrap_err();
        assert_eq!(e.path, "stages.waf");
        let e = parse(br#"{"stages": {}, "extra": 1}"#).unwrap_err();
        assert_eq!(e.path, "extra");
        let e = parse(br#"{"stages": {}}"#).unwrap_err();
        assert_eq!(e.path, "stages");
        let e = parse(br#"{"stages": []}"#).unwrap_err();
        assert_eq!(e.path, "stages");
        assert!(parse(b"\xff").is_err());
        assert!(parse(b"{}").is_err());
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/suite.md"))
                .unwrap();
        let example = doc
            .split("```json")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let c = parse(example.as_bytes()).unwrap_or_else(|e| panic!("docs/suite.md: {e}"));
        assert_eq!(c.stages.len(), 4);
    }
}
