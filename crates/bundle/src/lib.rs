//! Offline bundles: an image's data blocks, compressed, with a manifest that lets the
//! bundle verify itself after crossing an air gap, and the audit report, the SBOM and
//! the AMI registration spec, so a connected host can publish it without the image.
//!
//! A bundle is a directory (format described in `docs/BUNDLE.md`):
//!
//! | file | holds |
//! |---|---|
//! | `manifest.json` | format version, image size, every data block's index, SHA-256, offset and length in `blocks.zst`, the LINEAR aggregate, the other files' SHA-256, amiforge's version, the creation time |
//! | `manifest.json.sig` | optional: the ed25519 signature of `manifest.json`'s bytes, hex |
//! | `blocks.zst` | the non-zero 512 KiB blocks, one zstd frame each, in index order |
//! | `audit.json`, `sbom.cdx.json`, `register.json` | the audit, the SBOM, the RegisterImage spec |
//! | `vulndb.sqlite` | when the audit matched packages against a vulnerability database: that database |
//!
//! The SHA-256 of `manifest.json` covers everything: it is printed when the bundle is
//! made, to be compared out of band, and it is what the signature signs.
//!
//! A bundle is written to a directory; it is read from any [`Store`] that hands back
//! its files as byte sources: a [`Directory`], or (in the binary) S3 objects under
//! one prefix, read in place.

mod source;

pub use source::BundleSource;

use blockio::BlockSource;
use ed25519_dalek::{Signer, Verifier};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The format this crate writes and reads.
pub const FORMAT: &str = "amiforge-bundle";
/// Its version.
pub const FORMAT_VERSION: u32 = 1;
/// Block size: the EBS direct API's.
pub const BLOCK_SIZE: u64 = ebs::BLOCK_SIZE;
/// zstd level: the command-line tool's default, a good speed/size balance.
pub const ZSTD_LEVEL: i32 = 3;
/// Blocks compressed in parallel at a time: bounds memory to a few tens of MiB.
const BATCH: usize = 64;
/// Largest manifest read (a 64 TiB image of distinct blocks needs ~12 MiB per TiB).
const MANIFEST_LIMIT: u64 = 1 << 30;

/// File names inside a bundle.
pub const MANIFEST: &str = "manifest.json";
/// The signature file.
pub const SIGNATURE: &str = "manifest.json.sig";
/// The block store.
pub const BLOCKS: &str = "blocks.zst";

/// What can be wrong with a bundle, or go wrong making one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the image.
    #[error(transparent)]
    Image(#[from] blockio::Error),
    /// A file of the bundle could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest is not a valid bundle manifest.
    #[error("{path}: not a valid bundle manifest: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A block does not match the manifest.
    #[error("block {index} (image byte offset {}): {reason}", index * BLOCK_SIZE)]
    Block {
        /// The block index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A bundled file does not match the manifest.
    #[error("{name}: {reason}")]
    File {
        /// The file.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature is missing or does not verify.
    #[error("signature: {0}")]
    Signature(String),
    /// A key file could not be used.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One data block in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Block index in the image.
    pub index: u64,
    /// SHA-256 of the 512 KiB block (zero-padded at the image's end), base64 as EBS
    /// checksums are.
    pub sha256: String,
    /// Offset of its zstd frame in `blocks.zst`.
    pub offset: u64,
    /// Length of the frame.
    pub length: u64,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The amiforge version that made it.
    pub amiforge_version: String,
    /// When (RFC 3339, UTC).
    pub created: String,
    /// The bundle's name.
    pub name: String,
    /// The image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Every non-zero block, ascending. Blocks not listed are zeros.
    pub blocks: Vec<BlockEntry>,
    /// LINEAR aggregate of the listed blocks' SHA-256 (what CompleteSnapshot gets).
    pub aggregate: String,
    /// Size of `blocks.zst`.
    pub blocks_file_size: u64,
    /// SHA-256 (hex) of each other bundled file, by name.
    pub files: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Loads an ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519`
/// writes it).
pub fn load_signing_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| Error::Key {
        path: path.into(),
        reason: format!("not an ed25519 PKCS#8 PEM private key: {e}"),
    })
}

/// Loads an ed25519 public key (SPKI PEM, as `openssl pkey -pubout` writes it).
pub fn load_verifying_key(path: &Path) -> Result<ed25519_dalek::VerifyingKey> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let pem = std::fs::read_to_string(path).map_err(io(path))?;
    ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).map_err(|e| Error::Key {
        path: path.into(),
        reason: format!("not an ed25519 public key PEM: {e}"),
    })
}

/// A block ready for the store: index, SHA-256 and zstd frame.
type Packed = (u64, [u8; 32], Vec<u8>);

/// What [`create`] made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// The bundle directory.
    pub path: PathBuf,
    /// SHA-256 (hex) of `manifest.json`: compare it out of band.
    pub manifest_sha256: String,
    /// Data blocks stored.
    pub blocks: u64,
    /// Blocks of the image in all.
    pub image_blocks: u64,
    /// Bytes of block data stored, before compression.
    pub data_bytes: u64,
    /// Size of `blocks.zst`.
    pub compressed_bytes: u64,
    /// The LINEAR aggregate of the image's blocks: the checksum its snapshot gets.
    pub aggregate: String,
    /// Whether the manifest was signed.
    pub signed: bool,
}

/// Writes a bundle of `image` into the new directory `dir`, with `files` (name →
/// bytes) beside the blocks.
pub fn create(
    image: &dyn BlockSource,
    dir: &Path,
    name: &str,
    files: &[(&str, Vec<u8>)],
    key: Option<&ed25519_dalek::SigningKey>,
    progress: &dyn ebs::Progress,
) -> Result<Created> {
    std::fs::create_dir(dir).map_err(io(dir))?;
    let plan = ebs::plan(image)?;
    progress.started(&dir.display().to_string(), plan.data_blocks.len() as u64);
    let blocks_path = dir.join(BLOCKS);
    let mut out = BufWriter::new(File::create(&blocks_path).map_err(io(&blocks_path))?);
    let mut entries: Vec<BlockEntry> = Vec::new();
    let mut digests: Vec<[u8; 32]> = Vec::new();
    let mut offset = 0u64;
    let mut data_bytes = 0u64;
    for batch in plan.data_blocks.chunks(BATCH) {
        let done: Vec<Result<Option<Packed>>> = batch
            .par_iter()
            .map(|&index| {
                let mut buf = vec![0u8; BLOCK_SIZE as usize];
                let start = index * BLOCK_SIZE;
                let n = (image.len() - start).min(BLOCK_SIZE) as usize;
                image.read_exact_at(&mut buf[..n], start)?;
                if ebs::is_zero(&buf) {
                    return Ok(None);
                }
                let digest: [u8; 32] = sha2::Sha256::digest(&buf).into();
                let frame = zstd::bulk::compress(&buf, ZSTD_LEVEL).map_err(|e| Error::Block {
                    index,
                    reason: format!("compression failed: {e}"),
                })?;
                Ok(Some((index, digest, frame)))
            })
            .collect();
        for d in done {
            let packed = d?;
            progress.block(packed.as_ref().map_or(0, |_| BLOCK_SIZE));
            let Some((index, digest, frame)) = packed else {
                continue;
            };
            out.write_all(&frame).map_err(io(&blocks_path))?;
            entries.push(BlockEntry {
                index,
                sha256: ebs::b64(&digest),
                offset,
                length: frame.len() as u64,
            });
            digests.push(digest);
            offset += frame.len() as u64;
            data_bytes += BLOCK_SIZE;
        }
    }
    out.flush().map_err(io(&blocks_path))?;
    out.get_ref().sync_all().map_err(io(&blocks_path))?;
    let mut hashes = BTreeMap::new();
    for (file_name, bytes) in files {
        let path = dir.join(file_name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
        hashes.insert(file_name.to_string(), hex(&sha2::Sha256::digest(bytes)));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        amiforge_version: env!("CARGO_PKG_VERSION").into(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        name: name.into(),
        image_size: image.len(),
        block_size: BLOCK_SIZE,
        aggregate: ebs::linear_aggregate(digests.iter()),
        blocks: entries,
        blocks_file_size: offset,
        files: hashes,
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Manifest {
        path: dir.join(MANIFEST),
        reason: e.to_string(),
    })?;
    let manifest_path = dir.join(MANIFEST);
    std::fs::write(&manifest_path, &bytes).map_err(io(&manifest_path))?;
    if let Some(key) = key {
        let sig = key.sign(&bytes);
        let sig_path = dir.join(SIGNATURE);
        std::fs::write(&sig_path, hex(&sig.to_bytes()) + "\n").map_err(io(&sig_path))?;
    }
    Ok(Created {
        path: dir.into(),
        manifest_sha256: hex(&sha2::Sha256::digest(&bytes)),
        blocks: manifest.blocks.len() as u64,
        image_blocks: plan.image_blocks,
        data_bytes,
        compressed_bytes: offset,
        aggregate: manifest.aggregate.clone(),
        signed: key.is_some(),
    })
}

/// Where a bundle's files are kept.
pub trait Store: Send + Sync {
    /// Where that is, for messages: a directory, an S3 prefix.
    fn location(&self) -> String;
    /// The file `name`, or `None` when the bundle has no such file.
    fn open(&self, name: &str)
        -> std::result::Result<Option<Arc<dyn BlockSource>>, blockio::Error>;
}

/// A bundle directory on local disk.
pub struct Directory(pub PathBuf);

impl Store for Directory {
    fn location(&self) -> String {
        self.0.display().to_string()
    }

    fn open(
        &self,
        name: &str,
    ) -> std::result::Result<Option<Arc<dyn BlockSource>>, blockio::Error> {
        let path = self.0.join(name);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Arc::new(blockio::FileSource::open(path)?)))
    }
}

/// An opened bundle. Opening checks the manifest's shape; [`Bundle::verify`] checks
/// every byte.
pub struct Bundle {
    store: Box<dyn Store>,
    /// The manifest.
    pub manifest: Manifest,
    manifest_bytes: Vec<u8>,
    blocks: Arc<dyn BlockSource>,
}

/// The whole of `source`, refused past `limit` bytes.
fn read_all(source: &dyn BlockSource, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let len = source.len();
    if len > limit {
        return Err(format!("{len} bytes is more than the {limit} allowed"));
    }
    let mut bytes = vec![0u8; len as usize];
    source
        .read_exact_at(&mut bytes, 0)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The largest bundled document read (the audit, the SBOM, the vulnerability
/// database): 4 GiB, far above any real one.
const FILE_LIMIT: u64 = 4 << 30;

/// What [`Bundle::verify`] checked.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// SHA-256 (hex) of `manifest.json`.
    pub manifest_sha256: String,
    /// Blocks whose hash was checked.
    pub blocks: u64,
    /// The aggregate matched.
    pub aggregate: String,
    /// Files checked.
    pub files: Vec<String>,
    /// "verified", "unsigned" or "not checked (no public key given)".
    pub signature: String,
}

impl Bundle {
    /// Opens the bundle directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_in(Box::new(Directory(dir.into())))
    }

    /// Opens the bundle whose files `store` holds.
    pub fn open_in(store: Box<dyn Store>) -> Result<Self> {
        let manifest_path = PathBuf::from(format!("{}/{MANIFEST}", store.location()));
        let bad = |reason: String| Error::Manifest {
            path: manifest_path.clone(),
            reason,
        };
        let manifest_source = store
            .open(MANIFEST)?
            .ok_or_else(|| bad("there is no manifest: not a bundle".into()))?;
        if manifest_source.len() > MANIFEST_LIMIT {
            return Err(bad(format!(
                "{} bytes is more than any image needs",
                manifest_source.len()
            )));
        }
        let manifest_bytes = read_all(&*manifest_source, MANIFEST_LIMIT).map_err(bad)?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format {:?} version {}; this amiforge reads {FORMAT:?} version {FORMAT_VERSION}",
                manifest.format, manifest.format_version
            )));
        }
        if manifest.block_size != BLOCK_SIZE {
            return Err(bad(format!("block size {}", manifest.block_size)));
        }
        let image_blocks = manifest.image_size.div_ceil(BLOCK_SIZE);
        let mut expected_offset = 0;
        let mut previous: Option<u64> = None;
        for b in &manifest.blocks {
            if previous.is_some_and(|p| b.index <= p) || b.index >= image_blocks {
                return Err(bad(format!(
                    "block {} is out of order or past the image's {image_blocks} blocks",
                    b.index
                )));
            }
            if b.offset != expected_offset || b.length == 0 || b.length > 2 * BLOCK_SIZE {
                return Err(bad(format!(
                    "block {}'s frame at {}+{} does not follow the previous one",
                    b.index, b.offset, b.length
                )));
            }
            expected_offset += b.length;
            previous = Some(b.index);
        }
        if expected_offset != manifest.blocks_file_size {
            return Err(bad(
                "the block table does not add up to blocks_file_size".into()
            ));
        }
        let blocks = store.open(BLOCKS)?.ok_or_else(|| Error::File {
            name: BLOCKS.into(),
            reason: format!("missing from {}", store.location()),
        })?;
        Ok(Self {
            store,
            manifest,
            manifest_bytes,
            blocks,
        })
    }

    /// SHA-256 (hex) of the manifest.
    pub fn manifest_sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.manifest_bytes))
    }

    /// Where the bundle is: its directory, or its S3 prefix.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Block `i` of the manifest's table, decompressed and checked against its hash.
    pub fn read_entry(&self, entry: &BlockEntry) -> Result<Vec<u8>> {
        let bad = |reason: String| Error::Block {
            index: entry.index,
            reason,
        };
        let mut frame = vec![0u8; entry.length as usize];
        self.blocks
            .read_exact_at(&mut frame, entry.offset)
            .map_err(|e| bad(format!("{BLOCKS} cannot give its frame: {e}")))?;
        let data = zstd::bulk::decompress(&frame, BLOCK_SIZE as usize)
            .map_err(|e| bad(format!("corrupt zstd frame: {e}")))?;
        if data.len() as u64 != BLOCK_SIZE {
            return Err(bad(format!("decompresses to {} bytes", data.len())));
        }
        let got = ebs::block_checksum(&data);
        if got != entry.sha256 {
            return Err(bad(format!(
                "SHA-256 {got} does not match the manifest's {}",
                entry.sha256
            )));
        }
        Ok(data)
    }

    /// A bundled file, checked against the manifest.
    pub fn file(&self, name: &str) -> Result<Vec<u8>> {
        let want = self.manifest.files.get(name).ok_or_else(|| Error::File {
            name: name.into(),
            reason: "not in the manifest".into(),
        })?;
        let missing = || Error::File {
            name: name.into(),
            reason: format!("missing from {}", self.location()),
        };
        let source = self.store.open(name)?.ok_or_else(missing)?;
        let bytes = read_all(&*source, FILE_LIMIT).map_err(|reason| Error::File {
            name: name.into(),
            reason,
        })?;
        let got = hex(&sha2::Sha256::digest(&bytes));
        if &got != want {
            return Err(Error::File {
                name: name.into(),
                reason: format!("SHA-256 {got} does not match the manifest's {want}"),
            });
        }
        Ok(bytes)
    }

    /// Checks the signature (when a key is given), every file, every block and the
    /// aggregate. Stops at the first problem, naming it.
    pub fn verify(
        &self,
        key: Option<&ed25519_dalek::VerifyingKey>,
        progress: &dyn ebs::Progress,
    ) -> Result<Verified> {
        let signature_file = self.store.open(SIGNATURE)?;
        let signature = match key {
            Some(key) => {
                let text = signature_file
                    .as_deref()
                    .and_then(|s| read_all(s, 1024).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| {
                        Error::Signature(format!(
                            "{SIGNATURE} is missing: the bundle is not signed"
                        ))
                    })?;
                let bytes: [u8; 64] = unhex(text.trim())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Error::Signature(format!("{SIGNATURE} is not 64 hex bytes")))?;
                key.verify(&self.manifest_bytes, &ed25519_dalek::Signature::from_bytes(&bytes))
                    .map_err(|_| {
                        Error::Signature(
                            "does not verify with this public key: the manifest was changed or signed by another key"
                                .into(),
                        )
                    })?;
                "verified".to_string()
            }
            None if signature_file.is_some() => "not checked (no public key given)".into(),
            None => "unsigned".into(),
        };
        let mut files = Vec::new();
        for name in self.manifest.files.keys() {
            self.file(name)?;
            files.push(name.clone());
        }
        progress.started(&self.location(), self.manifest.blocks.len() as u64);
        let digests: Vec<Result<[u8; 32]>> = self
            .manifest
            .blocks
            .par_iter()
            .map(|e| {
                self.read_entry(e)?;
                progress.block(BLOCK_SIZE);
                digest_of(e)
            })
            .collect();
        let digests: Vec<[u8; 32]> = digests.into_iter().collect::<Result<_>>()?;
        // After the blocks, so a removed frame is reported as the block it shifted.
        let size = self.blocks.len();
        if size != self.manifest.blocks_file_size {
            return Err(Error::File {
                name: BLOCKS.into(),
                reason: format!(
                    "{size} bytes; the manifest says {}",
                    self.manifest.blocks_file_size
                ),
            });
        }
        let aggregate = ebs::linear_aggregate(digests.iter());
        if aggregate != self.manifest.aggregate {
            return Err(Error::Manifest {
                path: PathBuf::from(format!("{}/{MANIFEST}", self.location())),
                reason: format!(
                    "the aggregate of the blocks is {aggregate}, the manifest says {}",
                    self.manifest.aggregate
                ),
            });
        }
        Ok(Verified {
            manifest_sha256: self.manifest_sha256(),
            blocks: digests.len() as u64,
            aggregate,
            files,
            signature,
        })
    }

    /// Writes the raw image to `out` as a sparse file: zero blocks are holes.
    pub fn extract(&self, out: &Path, progress: &dyn ebs::Progress) -> Result<u64> {
        let f = File::create(out).map_err(io(out))?;
        f.set_len(self.manifest.image_size).map_err(io(out))?;
        progress.started(&self.location(), self.manifest.blocks.len() as u64);
        let image_size = self.manifest.image_size;
        for batch in self.manifest.blocks.chunks(BATCH) {
            let blocks: Vec<Result<(u64, Vec<u8>)>> = batch
                .par_iter()
                .map(|e| Ok((e.index, self.read_entry(e)?)))
                .collect();
            for b in blocks {
                let (index, data) = b?;
                let start = index * BLOCK_SIZE;
                let n = (image_size - start).min(BLOCK_SIZE) as usize;
                f.write_all_at(&data[..n], start).map_err(io(out))?;
                progress.block(BLOCK_SIZE);
            }
        }
        f.sync_all().map_err(io(out))?;
        Ok(image_size)
    }
}

fn digest_of(e: &BlockEntry) -> Result<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(&e.sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::Block {
            index: e.index,
            reason: format!(
                "the manifest's SHA-256 {:?} is not base64 of 32 bytes",
                e.sha256
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> blockio::MemorySource {
        let mut bytes = vec![0u8; 5 * BLOCK_SIZE as usize + 1000];
        for (i, b) in bytes.iter_mut().enumerate().skip(BLOCK_SIZE as usize) {
            if i < 2 * BLOCK_SIZE as usize || i > 4 * BLOCK_SIZE as usize {
                *b = (i % 251) as u8;
            }
        }
        blockio::MemorySource::new(bytes)
    }

    #[test]
    fn a_bundle_round_trips_and_stores_only_data_blocks() {
        let dir = tempdir();
        let img = image();
        let c = create(
            &img,
            &dir.join("b"),
            "t",
            &[("x.json", b"{}".to_vec())],
            None,
            &ebs::NoProgress,
        )
        .unwrap();
        assert_eq!(c.blocks, 3, "blocks 1, 4 and the partial last block 5");
        let b = Bundle::open(&dir.join("b")).unwrap();
        let v = b.verify(None, &ebs::NoProgress).unwrap();
        assert_eq!(v.signature, "unsigned");
        b.extract(&dir.join("out.img"), &ebs::NoProgress).unwrap();
        let mut original = vec![0u8; img.len() as usize];
        img.read_exact_at(&mut original, 0).unwrap();
        assert_eq!(std::fs::read(dir.join("out.img")).unwrap(), original);
    }

    fn tempdir() -> PathBuf {
        let p = std::env::temp_dir().join(format!("bundle-test-{}-{}", std::process::id(), rand()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn rand() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }
}
