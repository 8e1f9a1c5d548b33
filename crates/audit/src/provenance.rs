//! What the package databases account for, against what the root filesystem holds:
//! package files that are missing, and files under the system directories that no
//! package ships. Whether a package file's bytes still match its digest is checked
//! by the secrets auditor, which reads every file anyway ([`check`]), so that no
//! file is read twice.

use crate::{Auditor, Category, Context, Finding, Gap, NotExamined, Output, Severity};
use md5::Digest as _;

use std::collections::HashSet;

pub(crate) struct ProvenanceAuditor;

/// Directories whose files are the system's own: anything there that no package
/// ships was put there by a build step or by hand.
const SYSTEM_DIRS: [&str; 6] = ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/"];
/// Directories of executables and libraries: a changed file there changes what runs.
const CODE_DIRS: [&str; 10] = [
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/lib/",
    "/usr/lib64/",
    "/usr/libexec/",
    "/bin/",
    "/sbin/",
    "/lib/",
    "/lib32/",
    "/lib64/",
];

impl Auditor for ProvenanceAuditor {
    fn id(&self) -> &'static str {
        "provenance"
    }
    fn version(&self) -> &'static str {
        "1"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut out = Output::default();
        let p = ctx.provenance;
        let Some(root) = ctx.inspection.root_partition else {
            return Ok(out);
        };
        for u in &p.unread {
            out.not_examined.push(NotExamined {
                kind: Gap::PackageDatabase,
                partition: Some(root),
                what: u.path.clone(),
                reason: u.reason.clone(),
            });
        }
        if p.files.is_empty() {
            return Ok(out);
        }
        let present: HashSet<&str> = ctx
            .files
            .on(root)
            .filter(|f| f.metadata.kind == imagefs::FileKind::File)
            .map(|f| f.path.as_str())
            .collect();
        let mut missing: Vec<(&String, &packages::Owned)> = p
            .files
            .iter()
            .filter(|(path, _)| !present.contains(path.as_str()))
            .collect();
        missing.sort_by(|a, b| a.0.cmp(b.0));
        for (path, owned) in missing {
            let (name, severity) = if owned.conffile {
                ("conffile-missing", Severity::Low)
            } else {
                ("package-file-missing", Severity::Medium)
            };
            out.findings.push(
                Finding::new(
                    Category::Integrity,
                    name,
                    format!("A file of package {} is missing", owned.package),
                    severity,
                    Some(root),
                    Some(path.clone()),
                )
                .with_excerpt(format!("package {}", owned.package)),
            );
        }
        for f in ctx.files.on(root) {
            let system = SYSTEM_DIRS.iter().any(|d| f.path.starts_with(d));
            if system && f.metadata.kind == imagefs::FileKind::File && p.owner(&f.path).is_none() {
                out.findings.push(Finding::new(
                    Category::Integrity,
                    "unowned-system-file",
                    "A file in a system directory that no package ships",
                    Severity::Low,
                    Some(root),
                    Some(f.path.clone()),
                ));
            }
        }
        Ok(out)
    }
}

/// The digest of a file's bytes so far, in the algorithm its package recorded.
enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_digest(d: &packages::Digest) -> Self {
        match d {
            packages::Digest::Md5(_) => Hasher::Md5(md5::Md5::new()),
            packages::Digest::Sha1(_) => Hasher::Sha1(sha1::Sha1::new()),
            packages::Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            packages::Digest::Sha384(_) => Hasher::Sha384(sha2::Sha384::new()),
            packages::Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// A package file being read: what its package shipped, and the digest of its
/// bytes so far.
pub(crate) struct Check<'a> {
    owned: &'a packages::Owned,
    hasher: Hasher,
}

impl<'a> Check<'a> {
    /// The check of the file at `path` of partition `partition`, when a package
    /// ships it.
    pub(crate) fn of(ctx: &Context<'a>, partition: u32, path: &str) -> Option<Self> {
        if ctx.inspection.root_partition != Some(partition) {
            return None;
        }
        ctx.provenance.owner(path).map(|owned| Check {
            owned,
            hasher: Hasher::for_digest(&owned.digest),
        })
    }

    /// The file's next bytes.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Once the whole file was read: marks the secrets found in it as shipped by
    /// its package when its bytes are unchanged, or adds the integrity finding
    /// when they are not.
    pub(crate) fn finish(
        self,
        ctx: &Context<'_>,
        partition: u32,
        path: &str,
        found: &mut Vec<Finding>,
    ) {
        let expected = self.owned.digest.bytes();
        let actual = self.hasher.finish();
        let package = &self.owned.package;
        if actual == expected {
            let severity = ctx.config.severity("secret.vendor-shipped", Severity::Info);
            for f in found.iter_mut().filter(|f| f.category == Category::Secret) {
                f.severity = severity;
                f.title = format!("{} (shipped unchanged by package {package})", f.title);
            }
            return;
        }
        let (name, severity) = if self.owned.conffile {
            ("conffile-modified", Severity::Low)
        } else if CODE_DIRS.iter().any(|d| path.starts_with(d)) {
            ("package-file-modified", Severity::High)
        } else {
            ("package-file-modified", Severity::Medium)
        };
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        found.push(
            Finding::new(
                Category::Integrity,
                name,
                format!("A file of package {package} differs from what the package shipped"),
                severity,
                Some(partition),
                Some(path.to_string()),
            )
            .with_excerpt(format!(
                "package {package}: {} {} expected, {} found",
                self.owned.digest.algorithm(),
                hex(expected),
                hex(&actual)
            )),
        );
    }
}
