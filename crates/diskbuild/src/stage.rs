//! The staging tree: what the root filesystem is made from.
//!
//! `mkfs.ext4 -d` copies one directory, but the image needs more than the input
//! tree holds (`/etc/fstab`, GRUB's configuration and modules) and less (what
//! sysprep removes), and the input tree must not change. The stage mirrors the
//! tree with hard links, so it costs a directory entry per file, not a copy;
//! where a link cannot be made (another filesystem, or a file the user may not
//! link) the file is copied. Directories are new, with the tree's mode, owner and
//! modification time applied when the stage is sealed.
//!
//! The rule that keeps the input safe: a staged file is never opened for writing.
//! Changing a file means unlinking its name in the stage and creating a new file.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::BuildError;

/// A directory's attributes, applied after its content is in place (a
/// read-only directory would refuse the entries otherwise).
struct DirAttrs {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    modified: std::time::SystemTime,
}

/// The mirror of a tree, in a temporary directory removed when dropped.
pub struct Stage {
    dir: tempfile::TempDir,
    dirs: Vec<DirAttrs>,
    /// Files staged as hard links to the tree.
    pub linked: u64,
    /// Files that had to be copied.
    pub copied: u64,
    /// The character and block device nodes staged, relative to the root, sorted.
    pub devices: Vec<String>,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

/// `rel` as a relative path with no `..`, or an error naming it.
fn relative(rel: &str) -> Result<PathBuf, BuildError> {
    let path = Path::new(rel.trim_start_matches('/'));
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(path.to_path_buf())
    } else {
        Err(BuildError::Options(format!(
            "{rel}: a staged path must stay inside the tree"
        )))
    }
}

impl Stage {
    /// Mirrors `tree` into a new directory inside `near` (best on the tree's
    /// filesystem, so that files are linked rather than copied).
    pub fn mirror(tree: &Path, near: &Path) -> Result<Stage, BuildError> {
        let dir = tempfile::Builder::new()
            .prefix(".amiforge-stage-")
            .tempdir_in(near)
            .map_err(io_err("create a staging directory in", near))?;
        let mut stage = Stage {
            dir,
            dirs: Vec::new(),
            linked: 0,
            copied: 0,
            devices: Vec::new(),
        };
        stage.mirror_tree(tree)?;
        Ok(stage)
    }

    /// The staged tree's root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Mirrors `tree` into the stage's root, directories in parallel (rayon): most
    /// of the cost is one system call per entry.
    fn mirror_tree(&mut self, tree: &Path) -> Result<(), BuildError> {
        let shared = Mirroring {
            dirs: Mutex::new(Vec::new()),
            linked: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            devices: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        };
        let root = self.root().to_path_buf();
        rayon::scope(|s| mirror_into(s, tree.to_path_buf(), root.clone(), &root, &shared));
        if let Some(e) = shared.error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        self.dirs
            .extend(shared.dirs.into_inner().unwrap_or_else(|e| e.into_inner()));
        // Sealing goes deepest first; parents are listed before their children.
        self.dirs.sort_by_key(|d| d.path.components().count());
        let devices = shared
            .devices
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        self.devices.extend(
            devices
                .iter()
                .filter_map(|d| Some(d.strip_prefix(&root).ok()?.to_string_lossy().into_owned())),
        );
        self.devices.sort();
        self.linked += shared.linked.into_inner();
        self.copied += shared.copied.into_inner();
        Ok(())
    }

    /// Links `from` as `to`; copies it when a link cannot be made.
    fn link_or_copy(&mut self, from: &Path, to: &Path) -> Result<(), BuildError> {
        if link_or_copy(from, to)? {
            self.linked += 1;
        } else {
            self.copied += 1;
        }
        Ok(())
    }

    /// Whether `rel` exists in the stage (a symlink counts, whatever it points to).
    pub fn exists(&self, rel: &str) -> Result<bool, BuildError> {
        Ok(fs::symlink_metadata(self.root().join(relative(rel)?)).is_ok())
    }

    /// Removes `rel` (a file, a symlink or a whole directory) from the stage; the
    /// tree keeps it. Returns whether there was anything to remove.
    pub fn remove(&self, rel: &str) -> Result<bool, BuildError> {
        let path = self.root().join(relative(rel)?);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", &path)(e)),
            Ok(meta) if meta.is_dir() => {
                // The stage's directories are still owner-writable until sealed,
                // and sealing skips the directories that are gone.
                fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                Ok(true)
            }
            Ok(_) => {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                Ok(true)
            }
        }
    }

    /// Puts a new file at `rel` with `contents` and `mode`, owned by root, in place
    /// of whatever was there (the tree's file, if any, is untouched). Missing
    /// parent directories are made (mode 0755, root's).
    pub fn put(&mut self, rel: &str, contents: &[u8], mode: u32) -> Result<(), BuildError> {
        let path = self.root().join(relative(rel)?);
        self.make_parents(&path)?;
        self.remove(rel)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_err("create", &path))?;
        std::io::Write::write_all(&mut file, contents).map_err(io_err("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", &path))?;
        chown(&path, 0, 0)?;
        Ok(())
    }

    /// Puts a new file with `contents` in place of the regular file `rel`, with
    /// its mode and owner (the tree's file is untouched).
    pub fn replace(&mut self, rel: &str, contents: &[u8]) -> Result<(), BuildError> {
        let path = self.root().join(relative(rel)?);
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        self.put(rel, contents, meta.mode() & 0o7777)?;
        if meta.uid() != 0 || meta.gid() != 0 {
            chown(&path, meta.uid(), meta.gid())?;
        }
        Ok(())
    }

    /// Makes the directory `rel` (and its parents) if missing: mode 0755, root's.
    pub fn make_dir(&mut self, rel: &str) -> Result<(), BuildError> {
        let path = self.root().join(relative(rel)?);
        self.make_parents(&path.join("x"))
    }

    /// Stages every file of the tree's directory `from` (not its subdirectories)
    /// into the stage's directory `to`, linked like the rest.
    pub fn mirror_files(&mut self, tree: &Path, from: &str, to: &str) -> Result<u64, BuildError> {
        let src = tree.join(relative(from)?);
        let dst = self.root().join(relative(to)?);
        self.make_parents(&dst.join("x"))?;
        let mut n = 0;
        let mut entries: Vec<_> = fs::read_dir(&src)
            .map_err(io_err("list", &src))?
            .collect::<Result<_, _>>()
            .map_err(io_err("list", &src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if entry.file_type().map_err(io_err("stat", &src))?.is_file() {
                let to = dst.join(entry.file_name());
                if fs::symlink_metadata(&to).is_ok() {
                    fs::remove_file(&to).map_err(io_err("remove", &to))?;
                }
                self.link_or_copy(&entry.path(), &to)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn make_parents(&mut self, path: &Path) -> Result<(), BuildError> {
        let root = self.root().to_path_buf();
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        let mut missing = Vec::new();
        let mut at = parent.to_path_buf();
        while at != root && fs::symlink_metadata(&at).is_err() {
            missing.push(at.clone());
            if !at.pop() {
                break;
            }
        }
        for dir in missing.into_iter().rev() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(io_err("create", &dir))?;
            self.dirs.push(DirAttrs {
                path: dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                modified: std::time::UNIX_EPOCH,
            });
        }
        Ok(())
    }

    /// Gives every staged directory the tree's mode, owner and modification time
    /// (deepest first: setting a child's time does not move the parent's).
    pub fn seal(&mut self) -> Result<(), BuildError> {
        for d in self.dirs.iter().rev() {
            let meta = match fs::symlink_metadata(&d.path) {
                Ok(m) if m.is_dir() => m,
                // Removed or replaced after it was staged.
                _ => continue,
            };
            if meta.uid() != d.uid || meta.gid() != d.gid {
                chown(&d.path, d.uid, d.gid)?;
            }
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode))
                .map_err(io_err("set the mode of", &d.path))?;
            File::open(&d.path)
                .and_then(|f| f.set_modified(d.modified))
                .map_err(io_err("set the time of", &d.path))?;
        }
        self.dirs.clear();
        Ok(())
    }
}

/// What the parallel mirror shares between its tasks.
struct Mirroring {
    dirs: Mutex<Vec<DirAttrs>>,
    linked: AtomicU64,
    copied: AtomicU64,
    devices: Mutex<Vec<PathBuf>>,
    /// The first error; the other tasks stop when it is set.
    error: Mutex<Option<BuildError>>,
}

impl Mirroring {
    fn failed(&self) -> bool {
        self.error.lock().map_or(true, |e| e.is_some())
    }

    fn fail(&self, e: BuildError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
    }
}

/// Mirrors one directory, then spawns a task for each of its subdirectories.
fn mirror_into<'s>(
    scope: &rayon::Scope<'s>,
    src: PathBuf,
    dst: PathBuf,
    root: &'s Path,
    shared: &'s Mirroring,
) {
    if shared.failed() {
        return;
    }
    match mirror_one(&src, &dst, root, shared) {
        Ok(subdirs) => {
            for (from, to) in subdirs {
                scope.spawn(move |s| mirror_into(s, from, to, root, shared));
            }
        }
        Err(e) => shared.fail(e),
    }
}

/// Makes `dst` for the directory `src`, links or copies its other entries, and
/// returns its subdirectories.
fn mirror_one(
    src: &Path,
    dst: &Path,
    root: &Path,
    shared: &Mirroring,
) -> Result<Vec<(PathBuf, PathBuf)>, BuildError> {
    let meta = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    if dst != root {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dst)
            .map_err(io_err("create", dst))?;
    }
    let attrs = DirAttrs {
        path: dst.to_path_buf(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        modified: meta.modified().map_err(io_err("stat", src))?,
    };
    if let Ok(mut dirs) = shared.dirs.lock() {
        dirs.push(attrs);
    }
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(src).map_err(io_err("list", src))? {
        let entry = entry.map_err(io_err("list", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type().map_err(io_err("stat", &from))?;
        if kind.is_dir() {
            subdirs.push((from, to));
            continue;
        }
        if kind.is_char_device() || kind.is_block_device() {
            if let Ok(mut devices) = shared.devices.lock() {
                devices.push(to.clone());
            }
        }
        if link_or_copy(&from, &to)? {
            shared.linked.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.copied.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(subdirs)
}

/// Links `from` as `to` (true), or copies it when a link cannot be made (false).
fn link_or_copy(from: &Path, to: &Path) -> Result<bool, BuildError> {
    // linkat without AT_SYMLINK_FOLLOW: a symlink is linked, not its target.
    match fs::hard_link(from, to) {
        Ok(()) => return Ok(true),
        Err(e) if e.raw_os_error() == Some(EXDEV) || e.kind() == ErrorKind::PermissionDenied => {}
        Err(e) => return Err(io_err("link", from)(e)),
    }
    copy_entry(from, to)?;
    Ok(false)
}

/// Linux's "cross-device link" error number.
const EXDEV: i32 = 18;

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), BuildError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| BuildError::Io {
        what: if source.kind() == ErrorKind::PermissionDenied {
            "give its owner (build as root, or from a tree you own) to"
        } else {
            "set the owner of"
        },
        path: path.to_path_buf(),
        source,
    })
}

/// Copies one non-directory entry: a regular file's content, a symlink's target,
/// or a device, FIFO or socket node; with its mode, owner and modification time.
fn copy_entry(from: &Path, to: &Path) -> Result<(), BuildError> {
    let meta = fs::symlink_metadata(from).map_err(io_err("stat", from))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(io_err("read link", from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io_err("create", to))?;
    } else if kind.is_file() {
        fs::copy(from, to).map_err(io_err("copy", from))?;
        File::options()
            .write(true)
            .open(to)
            .and_then(|f| f.set_modified(meta.modified()?))
            .map_err(io_err("set the time of", to))?;
    } else {
        let file_type = rustix::fs::FileType::from_raw_mode(meta.mode());
        rustix::fs::mknodat(
            rustix::fs::CWD,
            to,
            file_type,
            rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
            meta.rdev(),
        )
        .map_err(|e| io_err("make the node", to)(e.into()))?;
    }
    if meta.uid() != rustix::process::geteuid().as_raw()
        || meta.gid() != rustix::process::getegid().as_raw()
    {
        chown(to, meta.uid(), meta.gid())?;
    }
    if !kind.is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("set the mode of", to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_changes_never_reach_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        fs::create_dir_all(t.join("etc/ssh")).unwrap();
        fs::write(t.join("etc/fstab"), "# unconfigured\n").unwrap();
        fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        std::os::unix::fs::symlink("etc/fstab", t.join("fstab-link")).unwrap();
        fs::set_permissions(t.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();

        let mut stage = Stage::mirror(t, t.parent().unwrap()).unwrap();
        assert_eq!(stage.linked + stage.copied, 3);
        stage
            .put("/etc/fstab", b"UUID=x / ext4 defaults 0 1\n", 0o644)
            .unwrap();
        assert!(stage.remove("etc/ssh/ssh_host_ed25519_key").unwrap());
        assert!(!stage.remove("etc/ssh/absent").unwrap());
        stage
            .put("boot/grub/grub.cfg", b"set timeout=1\n", 0o644)
            .unwrap();
        stage.seal().unwrap();
        assert!(stage.put("../escape", b"", 0o644).is_err());

        let s = stage.root();
        assert_eq!(
            fs::read_to_string(s.join("etc/fstab")).unwrap(),
            "UUID=x / ext4 defaults 0 1\n"
        );
        assert!(!s.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert_eq!(
            fs::read_link(s.join("fstab-link")).unwrap(),
            Path::new("etc/fstab")
        );
        assert_eq!(
            fs::metadata(s.join("etc")).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        assert!(s.join("boot/grub/grub.cfg").is_file());
        // The tree is as it was.
        assert_eq!(
            fs::read_to_string(t.join("etc/fstab")).unwrap(),
            "# unconfigured\n"
        );
        assert_eq!(
            fs::read_to_string(t.join("etc/ssh/ssh_host_ed25519_key")).unwrap(),
            "secret"
        );
        assert!(!t.join("boot").exists());
    }
}
