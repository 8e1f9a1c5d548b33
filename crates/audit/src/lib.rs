//! Audits a disk image before it ships, offline and read-only.
//!
//! [`audit`] inspects the image, walks every readable filesystem once into a file
//! index, then runs the registered [`Auditor`]s in parallel, one thread each:
//!
//! | id | finds |
//! |---|---|
//! | `packages` | installed dpkg, rpm and apk packages (the SBOM's input) |
//! | `secrets` | secrets in every file, compressed files included |
//! | `deleted-data` | secrets in the unallocated blocks of ext and FAT volumes |
//! | `hygiene` | the shared-AMI checklist: keys, histories, hashes, leftovers |
//! | `boot` | EC2 boot readiness: boot mode, ENA, NVMe, cloud-init |
//! | `provenance` | package files missing, changed, or not shipped by any package |
//! | `vulnerabilities` | known vulnerabilities of the packages, from an offline OSV database (after the others, on the packages they found; only when the configuration names a database) |
//!
//! Everything that could not be examined, by inspect or by any auditor, is a
//! [`NotExamined`] entry with its [`Gap`] kind, and each becomes a `coverage.*`
//! finding (see [`coverage_severity`]), so the gate never passes what the audit did
//! not see. An auditor that fails or panics does not take the others down: its
//! failure becomes a `coverage.auditor-failed` finding of high severity, so a broken
//! audit never reads as a clean one. [`Report::gate`] applies the `--fail-on` threshold.

mod boot;
pub mod config;
mod deleted;
mod files;
mod hygiene;
mod md5_lanes;
mod provenance;
pub mod sarif;
mod scan;
mod vulnerabilities;

pub use config::Config;
pub use files::{FileIndex, IndexedFile};
pub use inspect::{Gap, NotExamined};
pub use secrets::Severity;

use inspect::Image;
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// A secret, in a file or in unallocated space.
    Secret,
    /// Something that should not ship in a shared image.
    Hygiene,
    /// About the installed packages.
    Package,
    /// EC2 boot readiness.
    Boot,
    /// Something that could not be examined.
    Coverage,
    /// Package files changed, missing or unaccounted for.
    Integrity,
    /// Known vulnerabilities of the installed packages.
    Vuln,
}

impl Category {
    /// The lowercase name, also the prefix of rule ids.
    pub fn name(self) -> &'static str {
        match self {
            Category::Secret => "secret",
            Category::Hygiene => "hygiene",
            Category::Package => "package",
            Category::Boot => "boot",
            Category::Coverage => "coverage",
            Category::Integrity => "integrity",
            Category::Vuln => "vuln",
        }
    }
}

/// One thing the audit found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// Rule id, `<category>.<name>` ("secret.aws-access-key-id").
    pub rule: String,
    /// The rule's title.
    pub title: String,
    /// Category.
    pub category: Category,
    /// Severity (after the configuration's overrides).
    pub severity: Severity,
    /// Partition number (0 for a bare filesystem).
    pub partition: Option<u32>,
    /// Path inside the filesystem; `<unallocated>` for deleted data.
    pub path: Option<String>,
    /// 1-based line, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Byte offset in the image, for deleted data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What was found, redacted: never a whole secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    /// Stable id of this finding, for allow-lists.
    pub fingerprint: String,
    /// The package that shipped the file unchanged, for a secret in a vendor's
    /// file (or in Python bytecode compiled from one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_by: Option<String>,
    /// Why it was accepted, for findings in [`Report::allowed`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<String>,
    /// For a known vulnerability: the advisory, the package and the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerability: Option<vulndb::Match>,
}

impl Finding {
    /// A finding about `path` with a fingerprint made of the rule and location.
    pub fn new(
        category: Category,
        name: &str,
        title: impl Into<String>,
        severity: Severity,
        partition: Option<u32>,
        path: Option<String>,
    ) -> Self {
        let rule = format!("{}.{name}", category.name());
        let fingerprint = fingerprint(&[
            rule.as_bytes(),
            partition
                .map(|p| p.to_string())
                .unwrap_or_default()
                .as_bytes(),
            path.as_deref().unwrap_or("").as_bytes(),
        ]);
        Self {
            rule,
            title: title.into(),
            category,
            severity,
            partition,
            path,
            line: None,
            offset: None,
            excerpt: None,
            fingerprint,
            shipped_by: None,
            allowed_by: None,
            vulnerability: None,
        }
    }

    /// Adds an excerpt.
    pub fn with_excerpt(mut self, excerpt: impl Into<String>) -> Self {
        self.excerpt = Some(excerpt.into());
        self
    }
}

/// SHA-256 of the parts, NUL-separated, as 32 hex digits.
fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A path left out of the secret scan by the configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Skipped {
    /// Partition.
    pub partition: u32,
    /// Path.
    pub path: String,
    /// The `[skip]` pattern that matched.
    pub pattern: String,
}

/// How one auditor's run went.
#[derive(Debug, Clone, Serialize)]
pub struct AuditorRun {
    /// Registry id.
    pub id: &'static str,
    /// Its version: bumps when what it finds changes.
    pub version: &'static str,
    /// "ok" or "failed".
    pub status: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Counts for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Findings at each severity (accepted ones not included).
    pub findings: BTreeMap<Severity, u64>,
    /// Accepted findings at each severity.
    pub allowed: BTreeMap<Severity, u64>,
    /// Files read by the secret scan.
    pub files_scanned: u64,
    /// Bytes the secret scan looked at, decompressed bytes included.
    pub bytes_scanned: u64,
    /// Unallocated bytes looked at (holes in the image file are known zeros and
    /// are not read).
    pub unallocated_bytes_scanned: u64,
    /// Installed packages.
    pub packages: u64,
}

/// How much of one volume the audit saw, against what its filesystem says it holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VolumeCoverage {
    /// The partition (0 for a bare filesystem).
    pub partition: u32,
    /// Its content ("ext4", "xfs", "swap"...).
    pub filesystem: String,
    /// Whether its files were read.
    pub examined: bool,
    /// Entries (files, directories, links...) the walk listed.
    pub entries_listed: u64,
    /// Regular files the secret scan read.
    pub files_scanned: u64,
    /// Bytes the secret scan read from them, decompressed bytes included.
    pub bytes_scanned: u64,
    /// Bytes and inodes the filesystem says are in use, where it says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holds: Option<imagefs::Usage>,
}

/// The whole audit.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The image, as given.
    pub image: String,
    /// amiforge's version.
    pub amiforge_version: &'static str,
    /// The OS, from os-release.
    pub os: Option<inspect::OsRelease>,
    /// Userland architecture.
    pub architecture: Option<String>,
    /// Boot mode.
    pub boot_mode: inspect::BootMode,
    /// The root filesystem's partition.
    pub root_partition: Option<u32>,
    /// Counts.
    pub summary: Summary,
    /// Findings, worst first.
    pub findings: Vec<Finding>,
    /// Findings the configuration accepts, with the reason.
    pub allowed: Vec<Finding>,
    /// Installed packages.
    pub packages: Vec<packages::Package>,
    /// Everything not examined, each with the reason.
    pub not_examined: Vec<NotExamined>,
    /// Per volume: what the audit saw against what the filesystem holds.
    pub coverage: Vec<VolumeCoverage>,
    /// Paths the configuration kept out of the secret scan.
    pub skipped: Vec<Skipped>,
    /// The auditors that ran.
    pub auditors: Vec<AuditorRun>,
    /// The vulnerability database the packages were matched against, when one was
    /// given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerability_database: Option<vulndb::Info>,
}

impl Report {
    /// The findings at or above `threshold` (`None`: nothing fails).
    pub fn failing(&self, threshold: Option<Severity>) -> Vec<&Finding> {
        match threshold {
            None => Vec::new(),
            Some(t) => self.findings.iter().filter(|f| f.severity >= t).collect(),
        }
    }

    /// Whether the image passes the gate at `threshold`.
    pub fn gate(&self, threshold: Option<Severity>) -> bool {
        self.failing(threshold).is_empty()
    }
}

/// Everything an auditor may look at.
pub struct Context<'a> {
    /// The image.
    pub image: &'a Image,
    /// What inspect found.
    pub inspection: &'a inspect::Report,
    /// Every file of every readable filesystem.
    pub files: &'a FileIndex,
    /// The configuration.
    pub config: &'a Config,
    /// The compiled secret rules.
    pub scanner: &'a secrets::Scanner,
    /// Which package ships each file of the root filesystem, and its digest:
    /// read by the first auditor that asks ([`Context::provenance`]).
    provenance: &'a OnceLock<packages::Provenance>,
}

impl<'a> Context<'a> {
    /// Which package ships each file of the root filesystem, and its digest. The
    /// package databases are read by the first auditor that asks, while the
    /// auditors that do not need them run; the others wait for it.
    pub fn provenance(&self) -> &'a packages::Provenance {
        let cell: &'a OnceLock<packages::Provenance> = self.provenance;
        cell.get_or_init(|| {
            (self.inspection.root_partition)
                .and_then(|n| Some((n, self.image.filesystem(n).ok()?)))
                .map(|(n, fs)| {
                    let walked: std::collections::HashSet<&str, foldhash::fast::RandomState> =
                        (self.files.on(n))
                            .filter(|f| f.metadata.kind == imagefs::FileKind::Dir)
                            .map(|f| f.path.as_str())
                            .collect();
                    packages::provenance(&*fs, &|dir| walked.contains(dir))
                })
                .unwrap_or_default()
        })
    }
}

/// What an auditor produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Findings (before allow-lists and severity overrides).
    pub findings: Vec<Finding>,
    /// Packages.
    pub packages: Vec<packages::Package>,
    /// Things it could not examine.
    pub not_examined: Vec<NotExamined>,
    /// Files and bytes scanned.
    pub files_scanned: u64,
    /// Bytes scanned.
    pub bytes_scanned: u64,
    /// Unallocated bytes scanned.
    pub unallocated_bytes_scanned: u64,
    /// Files and bytes scanned, by partition.
    pub scanned: BTreeMap<u32, (u64, u64)>,
}

/// One kind of check.
pub trait Auditor: Sync {
    /// Registry id.
    fn id(&self) -> &'static str;
    /// Version of what it checks.
    fn version(&self) -> &'static str;
    /// Runs over the context. An `Err` is reported, never taken for a clean result.
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String>;
}

/// The registry: every auditor, in report order.
pub fn registry() -> Vec<Box<dyn Auditor>> {
    vec![
        Box::new(PackagesAuditor),
        Box::new(scan::SecretsAuditor),
        Box::new(deleted::DeletedDataAuditor),
        Box::new(hygiene::HygieneAuditor),
        Box::new(boot::BootAuditor),
        Box::new(provenance::ProvenanceAuditor),
    ]
}

struct PackagesAuditor;

impl Auditor for PackagesAuditor {
    fn id(&self) -> &'static str {
        "packages"
    }
    fn version(&self) -> &'static str {
        "1"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut out = Output::default();
        let Some(root) = ctx.inspection.root_partition else {
            return Ok(out);
        };
        let fs = ctx.image.filesystem(root).map_err(|e| e.to_string())?;
        let distro = packages::Distro {
            id: ctx.inspection.os.as_ref().and_then(|o| o.id.clone()),
            version_id: ctx
                .inspection
                .os
                .as_ref()
                .and_then(|o| o.version_id.clone()),
        };
        let inv = packages::inventory(&*fs, &distro);
        for u in inv.unread {
            out.not_examined.push(NotExamined {
                kind: Gap::PackageDatabase,
                partition: Some(root),
                what: u.path,
                reason: u.reason,
            });
        }
        if inv.databases.is_empty() && inv.packages.is_empty() {
            out.findings.push(Finding::new(
                Category::Package,
                "no-package-database",
                "No dpkg, rpm or apk database: the SBOM lists no OS packages",
                Severity::Info,
                Some(root),
                None,
            ));
        }
        out.packages = inv.packages;
        Ok(out)
    }
}

/// Progress of a long audit.
pub trait Progress: Sync {
    /// The audit will run this many auditors.
    fn planned(&self, auditors: usize) {
        let _ = auditors;
    }
    /// An auditor started.
    fn started(&self, id: &str);
    /// An auditor finished.
    fn finished(&self, id: &str, seconds: f64);
}

/// A progress sink that says nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn started(&self, _: &str) {}
    fn finished(&self, _: &str, _: f64) {}
}

/// Audits `image`. `name` is how the report names it.
pub fn audit(image: &Image, name: &str, config: &Config, progress: &dyn Progress) -> Report {
    let inspection = image.report();
    let scanner = secrets::Scanner::new();
    let files = FileIndex::build(image, config);
    let provenance = OnceLock::new();
    let ctx = Context {
        image,
        inspection: &inspection,
        files: &files,
        config,
        scanner: &scanner,
        provenance: &provenance,
    };
    let auditors = registry();
    progress.planned(auditors.len());
    let results: Vec<(AuditorRun, Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = auditors
            .iter()
            .map(|a| {
                let ctx = &ctx;
                s.spawn(move || {
                    progress.started(a.id());
                    let t = Instant::now();
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.run(ctx)));
                    let seconds = t.elapsed().as_secs_f64();
                    progress.finished(a.id(), seconds);
                    let (status, error, out) = match r {
                        Ok(Ok(out)) => ("ok", None, out),
                        Ok(Err(e)) => ("failed", Some(e), Output::default()),
                        Err(p) => {
                            let msg = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panicked".into());
                            (
                                "failed",
                                Some(format!("panicked: {msg}")),
                                Output::default(),
                            )
                        }
                    };
                    let run = AuditorRun {
                        id: a.id(),
                        version: a.version(),
                        status,
                        error,
                        seconds,
                    };
                    (run, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&auditors)
            .map(|(h, a)| {
                h.join().unwrap_or_else(|_| {
                    (
                        AuditorRun {
                            id: a.id(),
                            version: a.version(),
                            status: "failed",
                            error: Some("its thread could not be joined".into()),
                            seconds: 0.0,
                        },
                        Output::default(),
                    )
                })
            })
            .collect()
    });

    let mut report = Report {
        image: name.to_string(),
        amiforge_version: env!("CARGO_PKG_VERSION"),
        os: inspection.os.clone(),
        architecture: inspection.architecture.clone(),
        boot_mode: inspection.boot_mode,
        root_partition: inspection.root_partition,
        summary: Summary::default(),
        findings: Vec::new(),
        allowed: Vec::new(),
        packages: Vec::new(),
        not_examined: inspection
            .not_examined
            .iter()
            .chain(&files.not_examined)
            .cloned()
            .collect(),
        skipped: files.skipped.clone(),
        coverage: Vec::new(),
        auditors: Vec::new(),
        vulnerability_database: None,
    };
    let mut scanned: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (run, out) in results {
        if let Some(e) = &run.error {
            report.not_examined.push(NotExamined {
                kind: Gap::Auditor,
                partition: None,
                what: format!("auditor {}", run.id),
                reason: e.clone(),
            });
        }
        report.findings.extend(out.findings);
        report.packages.extend(out.packages);
        report.not_examined.extend(out.not_examined);
        report.summary.files_scanned += out.files_scanned;
        report.summary.bytes_scanned += out.bytes_scanned;
        report.summary.unallocated_bytes_scanned += out.unallocated_bytes_scanned;
        for (partition, (files, bytes)) in out.scanned {
            let tally = scanned.entry(partition).or_default();
            tally.0 += files;
            tally.1 += bytes;
        }
        report.auditors.push(run);
    }
    if let Some(db) = &config.vulnerabilities.database {
        // Like every auditor, a panic here is a failed check, not a failed audit.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vulnerabilities::run(db, config, &inspection, &mut report)
        }));
        if ran.is_err() {
            report.not_examined.push(NotExamined {
                kind: Gap::Auditor,
                partition: None,
                what: "auditor vulnerabilities".into(),
                reason: "panicked".into(),
            });
        }
    }
    provenance::credit_bytecode(&mut report.findings);
    report.coverage = volume_coverage(
        image,
        &inspection,
        &files,
        &scanned,
        &mut report.not_examined,
    );
    finish(&mut report, config);
    report
}

/// How much of each volume the audit saw, against what its filesystem holds (read
/// once per volume); a truncated volume's free space past the end of the image is
/// added to `not_examined`.
fn volume_coverage(
    image: &Image,
    inspection: &inspect::Report,
    files: &FileIndex,
    scanned: &BTreeMap<u32, (u64, u64)>,
    not_examined: &mut Vec<NotExamined>,
) -> Vec<VolumeCoverage> {
    let mut listed: BTreeMap<u32, u64> = BTreeMap::new();
    for e in &files.entries {
        *listed.entry(e.partition).or_default() += 1;
    }
    let mut out = Vec::new();
    for p in inspection
        .partitions
        .iter()
        .filter(|p| !p.partition.extended)
    {
        let n = p.partition.number;
        let volume = image.volumes().iter().find(|v| v.partition.number == n);
        let window = volume.and_then(|v| v.window.as_ref());
        let holds = volume.and_then(|v| imagefs::usage(window?, v.kind?).ok());
        if let (Some(h), Some(w), true) = (&holds, window, p.filesystem.examined) {
            if h.span > w.len() {
                not_examined.push(NotExamined {
                    kind: Gap::Unallocated,
                    partition: Some(n),
                    what: format!("unallocated space of partition {n} past the end of the image"),
                    reason: format!(
                        "the filesystem spans {} bytes but the image holds {}",
                        h.span,
                        w.len()
                    ),
                });
            }
        }
        let (files_scanned, bytes_scanned) = scanned.get(&n).copied().unwrap_or_default();
        out.push(VolumeCoverage {
            partition: n,
            filesystem: p.filesystem.kind.clone(),
            examined: p.filesystem.examined,
            entries_listed: listed.get(&n).copied().unwrap_or_default(),
            files_scanned,
            bytes_scanned,
            holds,
        });
    }
    out
}

/// The default severity of a coverage gap: a security gate must not pass what it
/// did not see, so an unread volume or directory is high, one file medium, and what
/// holds no files low.
pub fn coverage_severity(gap: Gap) -> Severity {
    match gap {
        Gap::Volume | Gap::AmbiguousSignature | Gap::Directory | Gap::Auditor => Severity::High,
        Gap::File
        | Gap::CompressedFile
        | Gap::PackageDatabase
        | Gap::Swap
        | Gap::UnknownContent
        | Gap::RaidSet
        | Gap::RootFilesystem
        | Gap::Vulnerabilities => Severity::Medium,
        Gap::NoFiles | Gap::Unallocated => Severity::Low,
    }
}

/// The `coverage.*` finding of one gap.
fn coverage_finding(n: &NotExamined) -> Finding {
    let is_path = matches!(
        n.kind,
        Gap::Directory | Gap::File | Gap::CompressedFile | Gap::PackageDatabase
    );
    let title = match n.kind {
        Gap::AmbiguousSignature => format!("{}: a further signature, not read", n.what),
        Gap::Auditor => format!("The {} failed: its checks did not run", n.what),
        Gap::RootFilesystem => "No root filesystem was found".to_string(),
        _ => format!("{} was not examined", n.what),
    };
    let mut f = Finding::new(
        Category::Coverage,
        n.kind.rule(),
        title,
        coverage_severity(n.kind),
        n.partition,
        is_path.then(|| n.what.clone()),
    )
    .with_excerpt(n.reason.clone());
    let partition = n.partition.map(|p| p.to_string()).unwrap_or_default();
    f.fingerprint = fingerprint(&[f.rule.as_bytes(), partition.as_bytes(), n.what.as_bytes()]);
    f
}

/// Turns every gap into its coverage finding, applies severities and allow-lists,
/// sorts, and counts.
fn finish(report: &mut Report, config: &Config) {
    report
        .not_examined
        .sort_by(|a, b| (a.partition, &a.what, &a.reason).cmp(&(b.partition, &b.what, &b.reason)));
    report.not_examined.dedup();
    let gaps: Vec<Finding> = report.not_examined.iter().map(coverage_finding).collect();
    report.findings.extend(gaps);
    let mut kept = Vec::new();
    for mut f in std::mem::take(&mut report.findings) {
        f.severity = config.severity(&f.rule, f.severity);
        match config.allowed_by(&f.rule, f.path.as_deref(), &f.fingerprint) {
            Some(why) => {
                f.allowed_by = Some(why);
                *report.summary.allowed.entry(f.severity).or_default() += 1;
                report.allowed.push(f);
            }
            None => {
                *report.summary.findings.entry(f.severity).or_default() += 1;
                kept.push(f);
            }
        }
    }
    let order = |f: &Finding| {
        (
            std::cmp::Reverse(f.severity),
            f.category,
            f.rule.clone(),
            f.partition,
            f.path.clone(),
            f.line,
            f.offset,
        )
    };
    kept.sort_by_key(order);
    report.allowed.sort_by_key(order);
    report.findings = kept;
    report.packages.sort_by(|a, b| {
        (a.kind, &a.name, &a.version, &a.arch).cmp(&(b.kind, &b.name, &b.version, &b.arch))
    });
    report.summary.packages = report.packages.len() as u64;
}
