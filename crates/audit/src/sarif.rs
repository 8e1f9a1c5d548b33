//! SARIF 2.1.0 output, for code-scanning dashboards.
//!
//! Each finding is a result whose artifact is `partition-<N>/<path>` (or
//! `partition-<N>/<unallocated>` with a byte offset for deleted data). Levels:
//! critical and high are `error`, medium `warning`, low and info `note`.

use crate::{Finding, Report, Severity};
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

fn location(f: &Finding) -> Value {
    let uri = match (f.partition, &f.path) {
        (Some(p), Some(path)) => format!(
            "partition-{p}{}",
            if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            }
        ),
        (Some(p), None) => format!("partition-{p}"),
        (None, Some(path)) => path.trim_start_matches('/').to_string(),
        (None, None) => "image".into(),
    };
    let mut physical = json!({ "artifactLocation": { "uri": uri } });
    if let Some(line) = f.line {
        physical["region"] = json!({ "startLine": line });
    } else if let Some(offset) = f.offset {
        physical["region"] = json!({ "byteOffset": offset });
    }
    json!({ "physicalLocation": physical })
}

/// The report as a SARIF 2.1.0 log.
pub fn to_sarif(report: &Report) -> Value {
    let mut rules: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in &report.findings {
        rules.entry(&f.rule).or_insert(f);
    }
    let index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    let rule_objects: Vec<Value> = rules
        .values()
        .map(|f| {
            json!({
                "id": f.rule,
                "name": f.rule,
                "shortDescription": { "text": f.title },
                "defaultConfiguration": { "level": level(f.severity) },
                "properties": { "category": f.category.name(), "severity": f.severity.name() },
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let mut text = f.title.clone();
            if let Some(e) = &f.excerpt {
                text.push_str(": ");
                text.push_str(e);
            }
            let mut properties =
                json!({ "severity": f.severity.name(), "category": f.category.name() });
            if let Some(v) = &f.vulnerability {
                properties["package"] = json!(v.package);
                properties["installedVersion"] = json!(v.installed);
                properties["fixedVersion"] = json!(v.fixed);
                properties["aliases"] = json!(v.aliases);
            }
            json!({
                "ruleId": f.rule,
                "ruleIndex": index[f.rule.as_str()],
                "level": level(f.severity),
                "message": { "text": text },
                "locations": [location(f)],
                "partialFingerprints": { "amiforge/v1": f.fingerprint },
                "properties": properties,
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "amiforge",
                "version": report.amiforge_version,
                "rules": rule_objects,
            }},
            "artifacts": [{ "location": { "uri": report.image } }],
            "results": results,
            "properties": {
                "notExamined": report.not_examined,
                "allowed": report.allowed.len(),
            },
        }],
    })
}
