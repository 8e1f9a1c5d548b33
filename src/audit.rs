//! `amiforge audit` and `amiforge sbom`.

use crate::progress::Reporter;
use anyhow::Result;
use audit::{Config, Report, Severity};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The gate threshold: fail when a finding is at least this severe.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Critical findings only.
    Critical,
    /// High and above.
    High,
    /// Medium and above.
    Medium,
    /// Low and above.
    Low,
    /// Never fail.
    None,
}

impl FailOn {
    /// The lowest failing severity, or `None` when nothing fails.
    pub fn threshold(self) -> Option<Severity> {
        match self {
            FailOn::Critical => Some(Severity::Critical),
            FailOn::High => Some(Severity::High),
            FailOn::Medium => Some(Severity::Medium),
            FailOn::Low => Some(Severity::Low),
            FailOn::None => None,
        }
    }

    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            FailOn::Critical => "critical",
            FailOn::High => "high",
            FailOn::Medium => "medium",
            FailOn::Low => "low",
            FailOn::None => "none",
        }
    }
}

/// Output format of `amiforge audit`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditFormat {
    /// A summary and one line per finding.
    Text,
    /// The whole report as one JSON document.
    Json,
    /// SARIF 2.1.0, for code-scanning dashboards.
    Sarif,
}

/// `amiforge audit` arguments.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX; or an EBS snapshot (`snap-…`),
    /// read in place.
    pub image: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AuditFormat::Text)]
    pub format: AuditFormat,
    /// Exit 1 when a finding is at least this severe.
    #[arg(long, value_enum, default_value_t = FailOn::High)]
    pub fail_on: FailOn,
    /// Configuration (TOML): allow-lists, skipped paths, severities, limits.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the report here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub vulnerabilities: VulnArgs,
    #[command(flatten)]
    pub aws: crate::cli::AwsArgs,
}

/// Matching the packages against an offline vulnerability database.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct VulnArgs {
    /// Match the installed packages against this vulnerability database (made by
    /// `amiforge vulndb import`); each affected package is a `vuln.<id>` finding.
    #[arg(long, value_name = "FILE")]
    pub vulndb: Option<PathBuf>,
    /// A database whose newest advisory is older than this is a finding itself
    /// (`vuln.database-stale`): "30d", "2weeks", "36h".
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub max_db_age: std::time::Duration,
}

impl VulnArgs {
    /// Opens the database into `config`.
    pub fn apply(&self, config: &mut Config) -> Result<()> {
        config.vulnerabilities.max_age = self.max_db_age;
        if let Some(path) = &self.vulndb {
            config.vulnerabilities.database =
                Some(std::sync::Arc::new(vulndb::Database::open(path)?));
        }
        Ok(())
    }
}

/// SBOM formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbomFormat {
    /// CycloneDX 1.6 JSON (also accepted as `json`, the spelling every other command
    /// takes).
    #[value(alias = "json")]
    CyclonedxJson,
    /// SPDX 2.3 JSON.
    SpdxJson,
}

/// `amiforge sbom` arguments.
#[derive(clap::Args, Debug)]
pub struct SbomArgs {
    /// The disk image: raw, qcow2, VMDK, VHD or VHDX; or an EBS snapshot (`snap-…`),
    /// read in place.
    pub image: PathBuf,
    /// Document format.
    #[arg(long, value_enum, default_value_t = SbomFormat::CyclonedxJson)]
    pub format: SbomFormat,
    /// Write the document here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub aws: crate::cli::AwsArgs,
}

/// Loads the configuration, or the defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

/// Audits `image` (opened from `path`), showing progress unless `show_progress` is
/// false.
pub fn run(
    image: &inspect::Image,
    path: &Path,
    config: &Config,
    show_progress: bool,
) -> Result<Report> {
    let progress = Reporter::new(show_progress, "auditors");
    progress.label(&format!("auditing {}", path.display()));
    let report = audit::audit(image, &path.display().to_string(), config, &*progress);
    progress.finish();
    Ok(report)
}

/// Returns false when the gate failed (exit 1).
pub fn audit_command(args: AuditArgs, show_progress: bool) -> Result<bool> {
    let mut config = load_config(args.config.as_deref())?;
    args.vulnerabilities.apply(&mut config)?;
    crate::input::configure_aws(args.aws.clone());
    let image = crate::input::image(&args.image)?;
    let report = run(&image, &args.image, &config, show_progress)?;
    let mut out = Vec::new();
    match args.format {
        AuditFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
        AuditFormat::Sarif => {
            serde_json::to_writer_pretty(&mut out, &audit::sarif::to_sarif(&report))?;
            writeln!(out)?;
        }
        AuditFormat::Text => print_text(&mut out, &report, args.fail_on)?,
    }
    crate::objects::deliver(args.output.as_deref(), &out, &args.image)?;
    let failing = report.failing(args.fail_on.threshold()).len();
    if failing > 0 {
        eprintln!(
            "amiforge: gate failed: {failing} finding(s) at or above {}",
            args.fail_on.name()
        );
    }
    Ok(failing == 0)
}

/// The audit gate of a step that ships an image (publish, bundle).
#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The gate: audit first, and stop before the step when a finding is at least
    /// this severe (see `amiforge audit`).
    #[arg(long, value_enum, default_value_t = FailOn::High)]
    pub fail_on: FailOn,
    /// Audit configuration (TOML): allow-lists, skipped paths, severities.
    #[arg(long)]
    pub audit_config: Option<PathBuf>,
    #[command(flatten)]
    pub vulnerabilities: VulnArgs,
}

impl GateArgs {
    /// Audits `image`, opened from `path`; `None` when the gate refuses (after
    /// saying why and that `not_done` was not done).
    pub fn audit(
        &self,
        image: &inspect::Image,
        path: &Path,
        not_done: &str,
        show_progress: bool,
    ) -> Result<Option<Report>> {
        let mut config = load_config(self.audit_config.as_deref())?;
        self.vulnerabilities.apply(&mut config)?;
        let report = run(image, path, &config, show_progress)?;
        Ok((!gate_refuses(&report, self.fail_on, not_done)).then_some(report))
    }
}

/// Applies the gate before a step that must not happen on failure: prints each
/// failing finding and what was not done. Returns true when the gate failed.
pub fn gate_refuses(report: &Report, fail_on: FailOn, not_done: &str) -> bool {
    let failing = report.failing(fail_on.threshold());
    if failing.is_empty() {
        return false;
    }
    for f in &failing {
        eprintln!(
            "amiforge: gate: {} {} {}",
            f.severity.name(),
            f.rule,
            f.path.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "amiforge: gate failed (--fail-on {}): {} finding(s); {not_done}",
        fail_on.name(),
        failing.len()
    );
    true
}

/// "2 critical, 1 high" for the summary's counts.
pub fn counts(map: &std::collections::BTreeMap<Severity, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .rev()
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_text(out: &mut dyn Write, r: &Report, fail_on: FailOn) -> Result<()> {
    let os =
        r.os.as_ref()
            .and_then(|o| o.pretty_name.clone())
            .unwrap_or_else(|| "unknown OS".into());
    writeln!(
        out,
        "{}: {os}, {}, boot {}",
        r.image,
        r.architecture.as_deref().unwrap_or("unknown architecture"),
        serde_json::to_value(r.boot_mode)?.as_str().unwrap_or("?")
    )?;
    writeln!(
        out,
        "scanned {} files ({} MiB) and {} MiB of unallocated space; {} packages",
        r.summary.files_scanned,
        r.summary.bytes_scanned >> 20,
        r.summary.unallocated_bytes_scanned >> 20,
        r.summary.packages
    )?;
    writeln!(
        out,
        "coverage (what the audit saw / what the filesystem holds):"
    )?;
    for c in &r.coverage {
        if !c.examined {
            writeln!(out, "  p{} {}: not examined", c.partition, c.filesystem)?;
            continue;
        }
        let holds = match &c.holds {
            Some(h) => {
                let inodes = h
                    .inodes_used
                    .map(|n| format!(", {n} inodes in use"))
                    .unwrap_or_default();
                format!(
                    "; holds {} KiB in use of {} KiB{inodes}",
                    h.bytes_used >> 10,
                    h.bytes_total >> 10
                )
            }
            None => String::new(),
        };
        writeln!(
            out,
            "  p{} {}: {} entries listed, {} files ({} KiB) scanned{holds}",
            c.partition,
            c.filesystem,
            c.entries_listed,
            c.files_scanned,
            c.bytes_scanned >> 10
        )?;
    }
    writeln!(
        out,
        "findings: {}; allowed by configuration: {}",
        counts(&r.summary.findings),
        counts(&r.summary.allowed)
    )?;
    for f in &r.findings {
        let mut place = match (f.partition, &f.path) {
            (Some(p), Some(path)) => format!("p{p}:{path}"),
            (Some(p), None) => format!("p{p}"),
            (None, Some(path)) => path.clone(),
            (None, None) => "-".into(),
        };
        if let Some(l) = f.line {
            place.push_str(&format!(":{l}"));
        }
        if let Some(o) = f.offset {
            place.push_str(&format!(" @ byte {o}"));
        }
        writeln!(
            out,
            "{:<8} {:<40} {place}",
            f.severity.name().to_uppercase(),
            f.rule
        )?;
        let mut detail = f.title.clone();
        if let Some(e) = &f.excerpt {
            detail.push_str(": ");
            detail.push_str(e);
        }
        writeln!(out, "         {detail}")?;
    }
    match &r.vulnerability_database {
        Some(db) => writeln!(
            out,
            "vulnerabilities: matched against {} ({} advisories, newest {})",
            db.path,
            db.advisories,
            db.newest_advisory.as_deref().unwrap_or("none")
        )?,
        None => writeln!(
            out,
            "vulnerabilities: not checked (no --vulndb database given)"
        )?,
    }
    if !r.not_examined.is_empty() {
        writeln!(out, "not examined:")?;
        for n in &r.not_examined {
            writeln!(out, "  {}: {}", n.what, n.reason)?;
        }
    }
    if !r.skipped.is_empty() {
        writeln!(out, "skipped by configuration: {} file(s)", r.skipped.len())?;
    }
    let failing = r.failing(fail_on.threshold()).len();
    writeln!(
        out,
        "gate (--fail-on {}): {}",
        fail_on.name(),
        if failing == 0 {
            "passed".to_string()
        } else {
            format!("FAILED, {failing} finding(s)")
        }
    )?;
    Ok(())
}

/// `amiforge sbom`.
pub fn sbom_command(args: SbomArgs) -> Result<()> {
    crate::input::configure_aws(args.aws.clone());
    let image = crate::input::image(&args.image)?;
    let input = sbom::Input::from_image(&image, &args.image.display().to_string())?;
    for u in &input.unread {
        eprintln!("amiforge: not examined: {}: {}", u.path, u.reason);
    }
    let doc = match args.format {
        SbomFormat::CyclonedxJson => sbom::cyclonedx(&input),
        SbomFormat::SpdxJson => sbom::spdx(&input),
    };
    let mut out = serde_json::to_vec_pretty(&doc)?;
    out.push(b'\n');
    crate::objects::deliver(args.output.as_deref(), &out, &args.image)?;
    Ok(())
}
