//! Sysprep: what a built machine leaves behind that no clone may inherit, taken
//! out of the staged tree before the image is sealed (in the spirit of
//! virt-sysprep's operations). Each operation lists what it removed; the audit's
//! hygiene checks of the same kinds find nothing afterwards.
//!
//! Everything happens in the [`Stage`]: files are unlinked there or replaced by new
//! files, so the input tree keeps them.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::stage::Stage;
use crate::BuildError;

/// One thing sysprep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The operation (`ssh-host-keys`, `machine-id`, ...).
    pub operation: &'static str,
    /// The path in the image.
    pub path: String,
    /// "removed", "emptied", or what changed.
    pub action: String,
}

/// The operations, in the order they run: name and what it does.
pub const OPERATIONS: &[(&str, &str)] = &[
    (
        "ssh-host-keys",
        "remove the SSH host keys (each instance makes its own on first boot)",
    ),
    (
        "machine-id",
        "empty /etc/machine-id (systemd sets it on first boot) and remove dbus's copy",
    ),
    (
        "shell-history",
        "remove shell and tool histories from /root and /home/*",
    ),
    (
        "cloud-init",
        "remove cloud-init's instance state, so that clones run first-boot setup",
    ),
    (
        "logfiles",
        "empty the logs in /var/log and remove rotated logs and journals",
    ),
    (
        "package-manager-cache",
        "remove downloaded packages from apt, dnf, yum, zypper and apk caches",
    ),
    ("tmp-files", "remove the contents of /tmp and /var/tmp"),
    (
        "random-seed",
        "remove saved random seeds (every clone would start from the same entropy)",
    ),
    ("dhcp-client-state", "remove DHCP leases"),
    (
        "udev-persistent-net",
        "remove udev's persistent network rules (they pin the build machine's MACs)",
    ),
    (
        "account-backups",
        "remove the backups of passwd, shadow, group and gshadow",
    ),
    ("crash-dumps", "remove crash dumps"),
    ("root-password", "lock root's password in /etc/shadow"),
];

/// Histories in a home directory.
const HISTORIES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".node_repl_history",
    ".lesshst",
    ".viminfo",
    ".wget-hsts",
];

/// Runs every operation on the stage.
pub fn run(stage: &mut Stage) -> Result<Vec<Removal>, BuildError> {
    let mut done = Vec::new();
    let mut removed = |stage: &mut Stage, op: &'static str, rel: &str| -> Result<(), BuildError> {
        if stage.remove(rel)? {
            done.push(Removal {
                operation: op,
                path: format!("/{rel}"),
                action: "removed".into(),
            });
        }
        Ok(())
    };

    for name in children(stage, "etc/ssh")? {
        if name.starts_with("ssh_host_") {
            removed(stage, "ssh-host-keys", &format!("etc/ssh/{name}"))?;
        }
    }

    for home in homes(stage)? {
        for h in HISTORIES {
            removed(stage, "shell-history", &format!("{home}/{h}"))?;
        }
    }

    for name in children(stage, "var/lib/cloud")? {
        removed(stage, "cloud-init", &format!("var/lib/cloud/{name}"))?;
    }

    for dir in [
        "var/cache/apt/archives",
        "var/cache/dnf",
        "var/cache/yum",
        "var/cache/zypp/packages",
        "var/cache/apk",
    ] {
        for name in children(stage, dir)? {
            let rel = format!("{dir}/{name}");
            // apt's lock and its partial/ directory belong to apt, not the cache.
            if name != "lock" && name != "partial" {
                removed(stage, "package-manager-cache", &rel)?;
            }
        }
    }
    for name in children(stage, "var/cache/apt")? {
        if name.ends_with(".bin") {
            removed(
                stage,
                "package-manager-cache",
                &format!("var/cache/apt/{name}"),
            )?;
        }
    }

    for dir in ["tmp", "var/tmp"] {
        for name in children(stage, dir)? {
            removed(stage, "tmp-files", &format!("{dir}/{name}"))?;
        }
    }

    for rel in [
        "var/lib/systemd/random-seed",
        "var/lib/random-seed",
        "var/lib/urandom/random-seed",
    ] {
        removed(stage, "random-seed", rel)?;
    }

    for dir in ["var/lib/dhcp", "var/lib/dhclient", "var/lib/NetworkManager"] {
        for name in children(stage, dir)? {
            if name.ends_with(".leases") || name.ends_with(".lease") {
                removed(stage, "dhcp-client-state", &format!("{dir}/{name}"))?;
            }
        }
    }

    removed(
        stage,
        "udev-persistent-net",
        "etc/udev/rules.d/70-persistent-net.rules",
    )?;

    for name in ["passwd-", "shadow-", "group-", "gshadow-"] {
        removed(stage, "account-backups", &format!("etc/{name}"))?;
    }

    for name in children(stage, "var/crash")? {
        removed(stage, "crash-dumps", &format!("var/crash/{name}"))?;
    }

    // machine-id: empty, as systemd expects of an image (not absent).
    if non_empty_file(stage, "etc/machine-id") {
        stage.replace("etc/machine-id", b"")?;
        done.push(Removal {
            operation: "machine-id",
            path: "/etc/machine-id".into(),
            action: "emptied".into(),
        });
    }
    if is_file(stage, "var/lib/dbus/machine-id") {
        stage.remove("var/lib/dbus/machine-id")?;
        done.push(Removal {
            operation: "machine-id",
            path: "/var/lib/dbus/machine-id".into(),
            action: "removed".into(),
        });
    }

    logs(stage, "var/log", &mut done)?;

    if let Some(shadow) = read(stage, "etc/shadow")? {
        let (text, changed) = lock_root(&shadow);
        if changed {
            stage.replace("etc/shadow", text.as_bytes())?;
            done.push(Removal {
                operation: "root-password",
                path: "/etc/shadow".into(),
                action: "root's password locked".into(),
            });
        }
    }
    Ok(done)
}

/// Empties every log under `dir` and removes rotated and compressed ones and the
/// journal's files.
fn logs(stage: &mut Stage, dir: &str, done: &mut Vec<Removal>) -> Result<(), BuildError> {
    let mut stack = vec![dir.to_string()];
    while let Some(dir) = stack.pop() {
        for name in children(stage, &dir)? {
            let rel = format!("{dir}/{name}");
            let meta = match fs::symlink_metadata(stage.root().join(&rel)) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if meta.is_dir() {
                stack.push(rel);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let rotated = is_rotated(&name) || rel.starts_with("var/log/journal/");
            if rotated {
                stage.remove(&rel)?;
                done.push(Removal {
                    operation: "logfiles",
                    path: format!("/{rel}"),
                    action: "removed".into(),
                });
            } else if meta.size() > 0 {
                stage.replace(&rel, b"")?;
                done.push(Removal {
                    operation: "logfiles",
                    path: format!("/{rel}"),
                    action: format!("emptied ({} bytes)", meta.size()),
                });
            }
        }
    }
    Ok(())
}

/// `syslog.1`, `dpkg.log.2.gz`, `auth.log-20240101`, `x.old`, or compressed.
fn is_rotated(name: &str) -> bool {
    let base = [".gz", ".xz", ".bz2", ".zst", ".old"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext));
    if base.is_some() {
        return true;
    }
    let last = name.rsplit(['.', '-']).next().unwrap_or("");
    name.contains(['.', '-']) && !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
}

/// /etc/shadow with root's password field set to `*` (locked) when it holds a
/// hash or is empty; whether it changed.
fn lock_root(shadow: &str) -> (String, bool) {
    let mut changed = false;
    let lines: Vec<String> = shadow
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 1 && fields[0] == "root" {
                let pw = fields[1];
                let locked = pw.starts_with('!') || pw.starts_with('*');
                if !locked {
                    fields[1] = "*";
                    changed = true;
                }
            }
            fields.join(":")
        })
        .collect();
    let mut out = lines.join("\n");
    if shadow.ends_with('\n') {
        out.push('\n');
    }
    (out, changed)
}

/// The names in the stage's directory `rel`, sorted; none when it is missing or
/// not a directory.
fn children(stage: &Stage, rel: &str) -> Result<Vec<String>, BuildError> {
    let path = stage.root().join(rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(Vec::new()),
    }
    let mut names: Vec<String> = fs::read_dir(&path)
        .map_err(|source| BuildError::Io {
            what: "list",
            path: path.clone(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// `root` and every `home/*` directory.
fn homes(stage: &Stage) -> Result<Vec<String>, BuildError> {
    let mut out = vec!["root".to_string()];
    for name in children(stage, "home")? {
        if fs::symlink_metadata(stage.root().join("home").join(&name)).is_ok_and(|m| m.is_dir()) {
            out.push(format!("home/{name}"));
        }
    }
    Ok(out)
}

fn is_file(stage: &Stage, rel: &str) -> bool {
    fs::symlink_metadata(stage.root().join(rel)).is_ok_and(|m| m.is_file())
}

fn non_empty_file(stage: &Stage, rel: &str) -> bool {
    fs::symlink_metadata(stage.root().join(rel)).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// A small text file of the stage (a regular file only).
fn read(stage: &Stage, rel: &str) -> Result<Option<String>, BuildError> {
    const LIMIT: u64 = 16 << 20;
    let path = stage.root().join(rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.len() <= LIMIT => {}
        _ => return Ok(None),
    }
    let bytes = fs::read(&path).map_err(|source| BuildError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_logs_are_told_from_current_ones() {
        for name in [
            "syslog.1",
            "dpkg.log.2.gz",
            "auth.log-20240101",
            "x.old",
            "kern.log.xz",
        ] {
            assert!(is_rotated(name), "{name}");
        }
        for name in ["syslog", "dpkg.log", "lastlog", "wtmp", "cloud-init.log"] {
            assert!(!is_rotated(name), "{name}");
        }
    }

    #[test]
    fn only_roots_usable_password_is_locked() {
        let (out, changed) =
            lock_root("root:$6$salt$hash:19000:0:99999:7:::\nuser:$6$x$y:1::::::\n");
        assert!(changed);
        assert_eq!(out, "root:*:19000:0:99999:7:::\nuser:$6$x$y:1::::::\n");
        let (_, changed) = lock_root("root:*:19000:0:99999:7:::\n");
        assert!(!changed);
        let (out, changed) = lock_root("root::19000:0:99999:7:::\n");
        assert!(changed);
        assert!(out.starts_with("root:*:"));
    }

    #[test]
    fn sysprep_lists_what_it_removed_and_leaves_the_tree_alone() {
        let tree = tempfile::tempdir().unwrap();
        let t = tree.path();
        for d in [
            "etc/ssh",
            "root",
            "home/ann",
            "var/log/apt",
            "var/lib/cloud/instances/i-1",
            "tmp",
        ] {
            fs::create_dir_all(t.join(d)).unwrap();
        }
        let files = [
            ("etc/ssh/ssh_host_ed25519_key", "key"),
            ("etc/ssh/ssh_host_ed25519_key.pub", "pub"),
            ("etc/ssh/sshd_config", "PasswordAuthentication no\n"),
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("etc/shadow", "root:$6$s$h:1::::::\n"),
            ("etc/shadow-", "root:$6$s$h:1::::::\n"),
            ("root/.bash_history", "aws configure\n"),
            ("home/ann/.python_history", "import os\n"),
            ("var/log/dpkg.log", "installed\n"),
            ("var/log/apt/history.log.1.gz", "gz"),
            (
                "var/lib/cloud/instances/i-1/user-data.txt",
                "#cloud-config\n",
            ),
            ("tmp/build.sh", "echo\n"),
        ];
        for (rel, body) in files {
            fs::write(t.join(rel), body).unwrap();
        }
        let mut stage = Stage::mirror(t, t.parent().unwrap()).unwrap();
        let done = run(&mut stage).unwrap();
        let listed: Vec<(&str, &str)> = done
            .iter()
            .map(|r| (r.operation, r.path.as_str()))
            .collect();
        for want in [
            ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key"),
            ("ssh-host-keys", "/etc/ssh/ssh_host_ed25519_key.pub"),
            ("shell-history", "/root/.bash_history"),
            ("shell-history", "/home/ann/.python_history"),
            ("cloud-init", "/var/lib/cloud/instances"),
            ("tmp-files", "/tmp/build.sh"),
            ("account-backups", "/etc/shadow-"),
            ("machine-id", "/etc/machine-id"),
            ("logfiles", "/var/log/dpkg.log"),
            ("logfiles", "/var/log/apt/history.log.1.gz"),
            ("root-password", "/etc/shadow"),
        ] {
            assert!(listed.contains(&want), "{want:?} in {listed:?}");
        }
        let s = stage.root();
        assert!(!s.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(s.join("etc/ssh/sshd_config").exists());
        assert_eq!(fs::read(s.join("etc/machine-id")).unwrap(), b"");
        assert_eq!(fs::read(s.join("var/log/dpkg.log")).unwrap(), b"");
        assert!(fs::read_to_string(s.join("etc/shadow"))
            .unwrap()
            .starts_with("root:*:"));
        // The tree is as it was.
        for (rel, body) in files {
            assert_eq!(fs::read_to_string(t.join(rel)).unwrap(), body, "{rel}");
        }
    }
}
