//! Block manifests (index → SHA-256) and the LINEAR aggregate checksum.

use crate::{b64, Error, Result, BLOCK_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What a manifest file says it is.
const FORMAT: &str = "amiforge-block-manifest";
/// The manifest format version this code writes and reads.
const VERSION: u32 = 1;

/// The blocks of an uploaded image: every non-zero block's SHA-256 (base64). A block
/// that is absent is all zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always "amiforge-block-manifest".
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The snapshot these blocks were uploaded to.
    pub snapshot_id: String,
    /// The image size in bytes.
    pub image_size: u64,
    /// 524288.
    pub block_size: u64,
    /// The snapshot's volume size in GiB.
    pub volume_size_gib: u64,
    /// Non-zero blocks: index → base64 SHA-256 of the 524288 (zero-padded) bytes.
    pub blocks: BTreeMap<u64, String>,
}

impl Manifest {
    /// An empty manifest for a snapshot.
    pub fn new(snapshot_id: &str, image_size: u64, volume_size_gib: u64) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            snapshot_id: snapshot_id.into(),
            image_size,
            block_size: BLOCK_SIZE,
            volume_size_gib,
            blocks: BTreeMap::new(),
        }
    }

    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::State {
            path: path.to_path_buf(),
            reason,
        };
        let text =
            std::fs::read(path).map_err(|e| bad(format!("cannot read the manifest: {e}")))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a block manifest: {e}")))?;
        if m.format != FORMAT || m.version != VERSION {
            return Err(bad(format!(
                "manifest format {} version {} is not {FORMAT} version {VERSION}",
                m.format, m.version
            )));
        }
        if m.block_size != BLOCK_SIZE {
            return Err(bad(format!(
                "block size {} is not {BLOCK_SIZE}",
                m.block_size
            )));
        }
        Ok(m)
    }

    /// Writes the manifest atomically (a temporary file, then a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::State {
            path: path.to_path_buf(),
            reason,
        };
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| bad(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| bad(format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| bad(format!("cannot rename into place: {e}")))?;
        Ok(())
    }
}

/// The LINEAR aggregate checksum: SHA-256 over the concatenated raw 32-byte digests of
/// the written blocks in ascending index order, base64.
pub fn linear_aggregate<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for d in digests {
        h.update(d);
    }
    b64(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn the_linear_aggregate_hashes_the_raw_digests_in_order() {
        let a: [u8; 32] = sha2::Sha256::digest(b"a").into();
        let b: [u8; 32] = sha2::Sha256::digest(b"b").into();
        let mut cat = a.to_vec();
        cat.extend_from_slice(&b);
        assert_eq!(linear_aggregate([&a, &b]), b64(&sha2::Sha256::digest(&cat)));
        assert_ne!(linear_aggregate([&a, &b]), linear_aggregate([&b, &a]));
    }

    #[test]
    fn a_manifest_round_trips_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.json");
        let mut m = Manifest::new("snap-1", 10, 1);
        m.blocks.insert(3, "x".into());
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);
        std::fs::write(&path, b"{\"format\":\"other\"}").unwrap();
        assert!(Manifest::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
