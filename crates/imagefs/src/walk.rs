//! A bounded, depth-first walk over a filesystem that reports what it could not read.

use crate::{show, FileKind, Filesystem, Metadata};

/// Bounds on a walk, against directory cycles in corrupt images and absurd trees.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Deepest directory level visited (the root's children are at depth 1).
    pub max_depth: usize,
    /// Most entries visited in all.
    pub max_entries: u64,
}

impl Default for WalkLimits {
    fn default() -> Self {
        // Real root filesystems nest a few dozen levels and hold a few million files.
        Self {
            max_depth: 128,
            max_entries: 20_000_000,
        }
    }
}

/// One entry met by the walk.
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Absolute path inside the filesystem.
    pub path: Vec<u8>,
    /// Its metadata (symlinks are not followed).
    pub metadata: Metadata,
}

/// Something the walk could not read. It is reported, never skipped in silence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalkProblem {
    /// The path involved.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// What a walk did.
#[derive(Debug, Default, Clone)]
pub struct WalkOutcome {
    /// Entries visited.
    pub entries: u64,
    /// Directories that could not be listed, and limits reached.
    pub problems: Vec<WalkProblem>,
}

/// Visits every entry under `root` in depth-first, name-sorted order. Symlinks are
/// reported, not followed, so a link cannot lead the walk outside the filesystem or
/// around in a loop.
pub fn walk(
    fs: &dyn Filesystem,
    root: &[u8],
    limits: WalkLimits,
    mut visit: impl FnMut(&WalkEntry),
) -> WalkOutcome {
    let mut out = WalkOutcome::default();
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(root.to_vec(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let mut entries = match fs.read_dir_walked(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.problems.push(WalkProblem {
                    path: show(&dir),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        entries.sort_by(|a, b| b.name.cmp(&a.name));
        let mut subdirs = Vec::new();
        for entry in entries.into_iter().rev() {
            if out.entries >= limits.max_entries {
                out.problems.push(WalkProblem {
                    path: show(&dir),
                    reason: format!("walk stopped after {} entries (limit)", limits.max_entries),
                });
                return out;
            }
            out.entries += 1;
            let mut path = dir.clone();
            if !path.ends_with(b"/") {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            let is_dir = entry.metadata.kind == FileKind::Dir;
            let e = WalkEntry {
                path,
                metadata: entry.metadata,
            };
            visit(&e);
            if is_dir {
                if depth + 1 >= limits.max_depth {
                    out.problems.push(WalkProblem {
                        path: show(&e.path),
                        reason: format!(
                            "deeper than {} levels (a directory cycle?); not entered",
                            limits.max_depth
                        ),
                    });
                } else {
                    subdirs.push((e.path, depth + 1));
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out
}
