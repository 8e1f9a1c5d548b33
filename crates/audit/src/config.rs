//! The audit configuration file (TOML): allow-lists, skipped paths, severities, limits.
//!
//! ```toml
//! [allow]
//! paths = ["/opt/fixtures/**"]        # findings under these globs are accepted
//! rules = ["secret.jwt"]              # findings of these rules are accepted
//! fingerprints = ["3f1c0d2a..."]      # these exact findings are accepted
//!
//! [skip]
//! paths = ["/var/cache/**"]           # not scanned for secrets; every skip is reported
//!
//! [severity]
//! "hygiene.shell-history" = "high"    # override a rule's severity
//!
//! [limits]
//! max_decompressed_bytes = 268435456
//! ```
//!
//! Accepted findings are not dropped: they move to the report's `allowed` list and
//! are counted in its summary.

use crate::Severity;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    allow: AllowFile,
    #[serde(default)]
    skip: SkipFile,
    #[serde(default)]
    severity: BTreeMap<String, Severity>,
    #[serde(default)]
    limits: Limits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowFile {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    fingerprints: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipFile {
    #[serde(default)]
    paths: Vec<String>,
}

/// Size bounds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most bytes taken from one compressed file. Larger output is scanned up to here,
    /// and the file is reported as scanned in part.
    pub max_decompressed_bytes: u64,
    /// Largest compressed file opened (the whole file is read to decompress it).
    pub max_compressed_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A rotated syslog rarely decompresses past a few hundred MiB.
            max_decompressed_bytes: 256 << 20,
            max_compressed_bytes: 64 << 20,
        }
    }
}

/// The loaded configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    allow_paths: Option<GlobSet>,
    allow_path_patterns: Vec<String>,
    allow_rules: Vec<String>,
    allow_fingerprints: Vec<String>,
    skip_paths: Option<GlobSet>,
    skip_path_patterns: Vec<String>,
    severity: BTreeMap<String, Severity>,
    /// Size bounds.
    pub limits: Limits,
    /// The vulnerability database, and how old it may be.
    pub vulnerabilities: Vulnerabilities,
}

/// Matching against an offline vulnerability database (`--vulndb`).
#[derive(Debug, Clone)]
pub struct Vulnerabilities {
    /// The database; without one, packages are not matched.
    pub database: Option<std::sync::Arc<vulndb::Database>>,
    /// Older than this (by its newest advisory), the database is a finding itself.
    pub max_age: std::time::Duration,
}

/// Advisories for a supported release appear every few days: a month without any
/// means the database was not refreshed.
pub const DEFAULT_MAX_DB_AGE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

impl Default for Vulnerabilities {
    fn default() -> Self {
        Self {
            database: None,
            max_age: DEFAULT_MAX_DB_AGE,
        }
    }
}

fn globs(patterns: &[String], path: &str) -> Result<Option<GlobSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| ConfigError::Invalid {
            path: path.into(),
            reason: format!("glob {p:?}: {e}"),
        })?);
    }
    b.build().map(Some).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        reason: e.to_string(),
    })
}

impl Config {
    /// Reads a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            allow_paths: globs(&f.allow.paths, origin)?,
            allow_path_patterns: f.allow.paths,
            allow_rules: f.allow.rules,
            allow_fingerprints: f.allow.fingerprints,
            skip_paths: globs(&f.skip.paths, origin)?,
            skip_path_patterns: f.skip.paths,
            severity: f.severity,
            limits: f.limits,
            vulnerabilities: Vulnerabilities::default(),
        })
    }

    /// The severity for `rule`: the configured one, else `default`.
    pub fn severity(&self, rule: &str, default: Severity) -> Severity {
        self.severity.get(rule).copied().unwrap_or(default)
    }

    /// Why a finding is accepted, if it is.
    pub fn allowed_by(&self, rule: &str, path: Option<&str>, fingerprint: &str) -> Option<String> {
        if self.allow_rules.iter().any(|r| r == rule) {
            return Some(format!("rule {rule} is allowed"));
        }
        if self.allow_fingerprints.iter().any(|f| f == fingerprint) {
            return Some(format!("fingerprint {fingerprint} is allowed"));
        }
        let (Some(set), Some(path)) = (&self.allow_paths, path) else {
            return None;
        };
        set.matches(path)
            .first()
            .map(|&i| format!("path matches {}", self.allow_path_patterns[i]))
    }

    /// The skip pattern `path` matches, if any.
    pub fn skipped_by(&self, path: &str) -> Option<&str> {
        let set = self.skip_paths.as_ref()?;
        set.matches(path)
            .first()
            .map(|&i| self.skip_path_patterns[i].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_rules_fingerprints_and_globs() {
        let c = Config::parse(
            "[allow]\npaths = [\"/opt/fixtures/**\"]\nrules = [\"secret.jwt\"]\nfingerprints = [\"abc\"]\n\
             [severity]\n\"hygiene.shell-history\" = \"high\"\n",
            "test",
        )
        .unwrap();
        assert!(c.allowed_by("secret.jwt", None, "x").is_some());
        assert!(c.allowed_by("secret.github-pat", None, "abc").is_some());
        assert!(c
            .allowed_by("secret.github-pat", Some("/opt/fixtures/a/b"), "x")
            .is_some());
        assert!(c
            .allowed_by("secret.github-pat", Some("/etc/x"), "x")
            .is_none());
        assert_eq!(
            c.severity("hygiene.shell-history", Severity::Medium),
            Severity::High
        );
    }

    #[test]
    fn unknown_keys_and_bad_globs_are_errors() {
        assert!(Config::parse("[allow]\npath = []\n", "t").is_err());
        assert!(Config::parse("[skip]\npaths = [\"a[\"]\n", "t").is_err());
        assert!(Config::parse("[severity]\nx = \"severe\"\n", "t").is_err());
    }
}
