//! What the package databases account for, against what the root filesystem holds:
//! package files that are missing, and files under the system directories that no
//! package ships. Whether a package file's bytes still match its digest is checked
//! by the secrets auditor, which reads every file anyway ([`check`]), so that no
//! file is read twice.

use crate::md5_lanes::Md5Lanes;
use crate::{Auditor, Category, Context, Finding, Gap, NotExamined, Output, Severity};
use sha2::Digest as _;

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
        let p = ctx.provenance();
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
        // One lookup for each regular file: it is either a package's (and then
        // that package file is present) or, in a system directory, nobody's.
        let mut present = 0;
        let mut unowned = Vec::new();
        for f in ctx.files.on(root) {
            if f.metadata.kind != imagefs::FileKind::File {
                continue;
            }
            if p.owner(&f.path).is_some() {
                present += 1;
                continue;
            }
            let system = SYSTEM_DIRS.iter().any(|d| f.path.starts_with(d));
            // Bytecode caches belong to their source's package (its install
            // scripts compile them); dpkg and rpm do not list them.
            let compiled =
                || compiled_from(&f.path).is_some_and(|source| p.owner(&source).is_some());
            if system && !compiled() {
                unowned.push(Finding::new(
                    Category::Integrity,
                    "unowned-system-file",
                    "A file in a system directory that no package ships",
                    Severity::Low,
                    Some(root),
                    Some(f.path.clone()),
                ));
            }
        }
        // Paths are unique on both sides, so every package file is present when
        // as many were found: the usual case, with no set of paths to build.
        if present < p.files.len() {
            missing(ctx, root, &mut out);
        }
        out.findings.extend(unowned);
        Ok(out)
    }
}

/// Package files missing from the root filesystem (`root`), in path order.
fn missing(ctx: &Context<'_>, root: u32, out: &mut Output) {
    let p = ctx.provenance();
    let present: HashSet<&str, foldhash::fast::RandomState> = ctx
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
}

/// The digest of a file's bytes so far, in the algorithm its package recorded.
enum Hasher {
    Md5(md5_many::Md5State),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_digest(d: &packages::Digest) -> Self {
        match d {
            packages::Digest::Md5(_) => Hasher::Md5(md5_many::Md5State::new()),
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

/// Package files up to this size, with an MD5 digest (dpkg's), are kept whole and
/// hashed side by side in SIMD lanes ([`Batch`]): one MD5 stream cannot be made
/// faster, and most package files are small (on a Debian root, 95% of them are
/// under 64 KiB). At most one file per lane is kept at a time. Up to 16 MiB takes
/// in a kernel image (14 MB on Debian 12), which hashed alone cost as much as a
/// quarter of all the lanes' work.
pub(crate) const BATCHED_FILE_MAX: u64 = 16 << 20;

/// How a file's digest is being made.
enum Digesting {
    /// Hashed as it is read.
    Streaming(Box<Hasher>),
    /// Kept whole, to be hashed in a [`Batch`].
    Buffered(Vec<u8>),
}

/// A package file being read: what its package shipped, and the digest of its
/// bytes so far (or the bytes themselves, for a small file).
pub(crate) struct Check<'a> {
    owned: &'a packages::Owned,
    /// The file's size, as its metadata gives it.
    size: u64,
    digesting: Digesting,
}

impl<'a> Check<'a> {
    /// The check of the file at `path` of partition `partition`, when a package
    /// ships it; `size` is the size its metadata gives.
    pub(crate) fn of(ctx: &Context<'a>, partition: u32, path: &str, size: u64) -> Option<Self> {
        if ctx.inspection.root_partition != Some(partition) {
            return None;
        }
        let owned = ctx.provenance().owner(path)?;
        let digesting = match owned.digest {
            packages::Digest::Md5(_) if size <= BATCHED_FILE_MAX => Digesting::Buffered(Vec::new()),
            _ => Digesting::Streaming(Box::new(Hasher::for_digest(&owned.digest))),
        };
        Some(Check {
            owned,
            size,
            digesting,
        })
    }

    /// The file's next bytes.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match &mut self.digesting {
            Digesting::Streaming(h) => h.update(bytes),
            // The file grew past what its metadata said: hash it as it comes.
            Digesting::Buffered(kept) if (kept.len() + bytes.len()) as u64 > BATCHED_FILE_MAX => {
                let mut h = Hasher::for_digest(&self.owned.digest);
                h.update(kept);
                h.update(bytes);
                self.digesting = Digesting::Streaming(Box::new(h));
            }
            Digesting::Buffered(kept) => {
                if kept.capacity() == 0 {
                    // Room for the whole file at once: growing by doubling would
                    // copy it again and touch fresh memory at each step.
                    kept.reserve_exact(self.size.min(BATCHED_FILE_MAX) as usize);
                }
                kept.extend_from_slice(bytes);
            }
        }
    }

    /// A file's bytes, all of them, when none were given before: a small file's
    /// are kept as they are for the batch, without a copy.
    pub(crate) fn whole(&mut self, bytes: Vec<u8>) {
        match &mut self.digesting {
            Digesting::Buffered(kept)
                if kept.is_empty() && bytes.len() as u64 <= BATCHED_FILE_MAX =>
            {
                *kept = bytes;
            }
            _ => self.update(&bytes),
        }
    }

    /// Once the whole file was read: marks the secrets found in it as shipped by
    /// its package when its bytes are unchanged, or adds the integrity finding
    /// when they are not. A small file's check goes to a lane of `batch`, with
    /// what was found in it, and ends when its lane has hashed it.
    pub(crate) fn finish(
        self,
        ctx: &Context<'_>,
        file: (u32, &str),
        mut found: Vec<Finding>,
        batch: &mut Batch<'a>,
        out: &mut Output,
    ) {
        match self.digesting {
            Digesting::Streaming(h) => {
                judge(ctx, self.owned, file, &h.finish(), &mut found);
                out.findings.extend(found);
            }
            Digesting::Buffered(bytes) => batch.add(
                Waiting {
                    owned: self.owned,
                    partition: file.0,
                    path: file.1.to_string(),
                    bytes,
                    found,
                },
                ctx,
                out,
            ),
        }
    }
}

/// A package file read whole, waiting for its digest.
struct Waiting<'a> {
    owned: &'a packages::Owned,
    partition: u32,
    path: String,
    bytes: Vec<u8>,
    found: Vec<Finding>,
}

impl Waiting<'_> {
    /// With the digest of its bytes: its findings, judged, to `out`.
    fn judged(self, ctx: &Context<'_>, digest: &[u8], out: &mut Output) {
        let mut found = self.found;
        judge(
            ctx,
            self.owned,
            (self.partition, &self.path),
            digest,
            &mut found,
        );
        out.findings.extend(found);
    }
}

impl AsRef<[u8]> for Waiting<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Package files being hashed side by side in SIMD lanes ([`Md5Lanes`]); each
/// file's findings are judged when its digest is done.
pub(crate) struct Batch<'a> {
    lanes: Md5Lanes<Waiting<'a>>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new() -> Self {
        Batch {
            lanes: Md5Lanes::new(),
        }
    }

    fn add(&mut self, file: Waiting<'a>, ctx: &Context<'_>, out: &mut Output) {
        self.lanes
            .add(file, |file, digest| file.judged(ctx, &digest, out));
    }

    /// Hashes every file still waiting, and puts their findings in `out`.
    pub(crate) fn hash(&mut self, ctx: &Context<'_>, out: &mut Output) {
        self.lanes
            .finish(|file, digest| file.judged(ctx, &digest, out));
    }
}

/// With the digest of a whole package file: marks the secrets found in it as
/// shipped by its package when its bytes are unchanged, or adds the integrity
/// finding when they are not.
fn judge(
    ctx: &Context<'_>,
    owned: &packages::Owned,
    (partition, path): (u32, &str),
    actual: &[u8],
    found: &mut Vec<Finding>,
) {
    let expected = owned.digest.bytes();
    let package = &owned.package;
    if actual == expected {
        let severity = ctx.config.severity("secret.vendor-shipped", Severity::Info);
        for f in found.iter_mut().filter(|f| f.category == Category::Secret) {
            f.severity = severity;
            f.title = format!("{} (shipped unchanged by package {package})", f.title);
            f.shipped_by = Some(package.clone());
        }
        return;
    }
    let (name, severity) = if owned.conffile {
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
            owned.digest.algorithm(),
            hex(expected),
            hex(actual)
        )),
    );
}

/// The Python source a bytecode cache file is compiled from:
/// `DIR/__pycache__/NAME.TAG.pyc` (TAG such as `cpython-311` or
/// `cpython-311.opt-1`) comes from `DIR/NAME.py`.
pub(crate) fn compiled_from(path: &str) -> Option<String> {
    let (dir, file) = path.rsplit_once("/__pycache__/")?;
    let (name, tag) = file.strip_suffix(".pyc")?.split_once('.')?;
    (!name.is_empty() && !tag.is_empty() && !file.contains('/')).then(|| format!("{dir}/{name}.py"))
}

/// A secret in Python bytecode is vendor-shipped when the very same secret (the
/// same content fingerprint) was found vendor-shipped in the source it is
/// compiled from: a package's example key, compiled by its install scripts. Any
/// other secret in bytecode keeps its severity.
pub(crate) fn credit_bytecode(findings: &mut [Finding]) {
    let shipped: std::collections::HashMap<(&str, &str), (String, Severity)> = findings
        .iter()
        .filter(|f| f.category == Category::Secret)
        .filter_map(|f| {
            let package = f.shipped_by.clone()?;
            Some((
                (f.path.as_deref()?, f.fingerprint.as_str()),
                (package, f.severity),
            ))
        })
        .collect();
    let credits: Vec<(usize, String, String, Severity)> = findings
        .iter()
        .enumerate()
        .filter(|(_, f)| f.category == Category::Secret && f.shipped_by.is_none())
        .filter_map(|(i, f)| {
            let source = compiled_from(f.path.as_deref()?)?;
            let (package, severity) = shipped
                .get(&(source.as_str(), f.fingerprint.as_str()))?
                .clone();
            Some((i, source, package, severity))
        })
        .collect();
    for (i, source, package, severity) in credits {
        let f = &mut findings[i];
        f.severity = severity;
        f.title = format!(
            "{} (compiled from {source}, shipped unchanged by package {package})",
            f.title
        );
        f.shipped_by = Some(package);
    }
}

#[cfg(test)]
mod tests {
    use md5::Digest as _;

    #[test]
    fn bytecode_caches_name_their_python_source() {
        let from = super::compiled_from;
        assert_eq!(
            from("/usr/lib/python3/dist-packages/cloudinit/config/__pycache__/cc_ssh.cpython-311.pyc")
                .as_deref(),
            Some("/usr/lib/python3/dist-packages/cloudinit/config/cc_ssh.py")
        );
        assert_eq!(
            from("/a/__pycache__/m.cpython-311.opt-1.pyc").as_deref(),
            Some("/a/m.py")
        );
        assert_eq!(from("/a/__pycache__/m.pyc"), None);
        assert_eq!(from("/a/m.cpython-311.pyc"), None);
        assert_eq!(from("/a/__pycache__/sub/m.cpython-311.pyc"), None);
    }

    /// The streaming state, fed in pieces of any size, gives the same digest.
    #[test]
    fn streamed_md5_agrees_with_md5_crate() {
        let data: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for piece in [1, 63, 64, 65, 8191, 1 << 20] {
            let mut h = super::Hasher::for_digest(&packages::Digest::Md5([0; 16]));
            for p in data[..(piece * 50).min(data.len())].chunks(piece) {
                h.update(p);
            }
            let whole = &data[..(piece * 50).min(data.len())];
            assert_eq!(
                h.finish(),
                md5::Md5::digest(whole).to_vec(),
                "pieces of {piece}"
            );
        }
    }
}
