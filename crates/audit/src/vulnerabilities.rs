//! Known vulnerabilities: the packages the audit found, matched against the offline
//! OSV database the configuration names. Runs after the auditors, on their packages.

use crate::{fingerprint, AuditorRun, Category, Config, Finding, Gap, NotExamined, Report};
use secrets::Severity;
use std::time::{Instant, SystemTime};
use vulndb::Rating;

/// The severity of a rating. An advisory without one is medium: unknown is not
/// harmless.
fn severity(rating: Rating) -> Severity {
    match rating {
        Rating::Critical => Severity::Critical,
        Rating::High => Severity::High,
        Rating::Medium | Rating::Unrated => Severity::Medium,
        Rating::Low => Severity::Low,
    }
}

/// Matches `report.packages` against `db` and adds the findings, the database's
/// description and the auditor's run to `report`.
pub(crate) fn run(
    db: &vulndb::Database,
    config: &Config,
    inspection: &inspect::Report,
    report: &mut Report,
) {
    let started = Instant::now();
    let info = db.info().clone();
    let root = inspection.root_partition;
    let mut error = None;
    match info.age(SystemTime::now()) {
        Some(age) if age <= config.vulnerabilities.max_age => {}
        age => {
            let reason = match age {
                Some(age) => format!(
                    "its newest advisory ({}) is {} old, more than the {} allowed",
                    info.newest_advisory.as_deref().unwrap_or(""),
                    humantime::format_duration(std::time::Duration::from_secs(age.as_secs())),
                    humantime::format_duration(config.vulnerabilities.max_age)
                ),
                None => "it holds no dated advisories".to_string(),
            };
            report.findings.push(
                Finding::new(
                    Category::Vuln,
                    "database-stale",
                    "The vulnerability database is out of date: recent advisories are missing",
                    Severity::Medium,
                    None,
                    Some(info.path.clone()),
                )
                .with_excerpt(reason),
            );
        }
    }
    let os = inspection.os.as_ref();
    let id = os.and_then(|o| o.id.as_deref()).unwrap_or("");
    let version = os.and_then(|o| o.version_id.as_deref()).unwrap_or("");
    match db.matches(&report.packages, id, version) {
        Err(e) => error = Some(e.to_string()),
        Ok(m) => {
            if let (Some(why), false) = (&m.unmatched, report.packages.is_empty()) {
                report.not_examined.push(NotExamined {
                    kind: Gap::Vulnerabilities,
                    partition: root,
                    what: format!("{} installed packages", report.packages.len()),
                    reason: why.clone(),
                });
            }
            for v in m.matches {
                report.findings.push(finding(v, root, &report.packages));
            }
        }
    }
    if let Some(e) = &error {
        report.not_examined.push(NotExamined {
            kind: Gap::Auditor,
            partition: None,
            what: "auditor vulnerabilities".into(),
            reason: e.clone(),
        });
    }
    report.vulnerability_database = Some(info);
    report.auditors.push(AuditorRun {
        id: "vulnerabilities",
        version: "1",
        status: if error.is_some() { "failed" } else { "ok" },
        error,
        seconds: started.elapsed().as_secs_f64(),
    });
}

fn finding(v: vulndb::Match, root: Option<u32>, packages: &[packages::Package]) -> Finding {
    let database = packages
        .iter()
        .find(|p| p.name == v.package && p.version == v.installed)
        .map(|p| p.database.clone());
    let title = match &v.summary {
        Some(s) if !s.is_empty() => format!("{}: {s}", v.id),
        _ => format!("{}: a known vulnerability of {}", v.id, v.advisory_package),
    };
    let mut excerpt = format!("package {} {}", v.package, v.installed);
    if v.advisory_package != v.package || v.compared_version != v.installed {
        excerpt.push_str(&format!(
            " (source {} {})",
            v.advisory_package, v.compared_version
        ));
    }
    match &v.fixed {
        Some(f) => excerpt.push_str(&format!("; fixed in {f}")),
        None => excerpt.push_str("; no fixed version"),
    }
    if !v.aliases.is_empty() {
        excerpt.push_str(&format!("; aliases {}", v.aliases.join(", ")));
    }
    excerpt.push_str(&format!("; rating: {}", v.rating_source));
    let mut f = Finding::new(
        Category::Vuln,
        &v.id,
        title,
        severity(v.rating),
        root,
        database,
    )
    .with_excerpt(excerpt);
    // One finding per advisory and installed package.
    let partition = root.map(|p| p.to_string()).unwrap_or_default();
    f.fingerprint = fingerprint(&[
        f.rule.as_bytes(),
        partition.as_bytes(),
        v.package.as_bytes(),
    ]);
    f.vulnerability = Some(v);
    f
}
