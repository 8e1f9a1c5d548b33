//! The shared-AMI hygiene checklist (AWS's guidance for shared AMIs, Marketplace
//! policy, virt-sysprep's operations), checked on the root filesystem.

use crate::{Auditor, Category, Context, Finding, IndexedFile, Output};
use imagefs::{FileKind, Filesystem, FsKind};
use secrets::Severity::{self, *};

pub(crate) struct HygieneAuditor;

/// Largest configuration file read (sshd_config, shadow, passwd, rsyslog.conf).
const CONFIG_LIMIT: u64 = 16 << 20;

/// Files that hold credentials, relative to a home directory.
const HOME_CREDENTIALS: &[&str] = &[
    ".aws/credentials",
    ".docker/config.json",
    ".kube/config",
    ".netrc",
    ".pgpass",
    ".git-credentials",
    ".config/gcloud/credentials.db",
    ".config/gcloud/application_default_credentials.json",
    ".azure/accessTokens.json",
    ".azure/msal_token_cache.json",
    ".vault-token",
    ".pypirc",
    ".npmrc",
];

/// Per-instance identity and state that a clone must not inherit: (path, rule, title,
/// severity).
const INSTANCE_STATE: &[(&str, &str, &str, Severity)] = &[
    (
        "/var/lib/systemd/random-seed",
        "random-seed",
        "A saved random seed: every clone starts from the same entropy",
        Low,
    ),
    (
        "/var/lib/random-seed",
        "random-seed",
        "A saved random seed: every clone starts from the same entropy",
        Low,
    ),
    (
        "/etc/udev/rules.d/70-persistent-net.rules",
        "persistent-net-rules",
        "Persistent network rules pin the build machine's MAC addresses",
        Low,
    ),
    (
        "/etc/krb5.keytab",
        "kerberos-keytab",
        "A Kerberos keytab: the build machine's host credentials",
        High,
    ),
    (
        "/etc/passwd-",
        "account-file-backup",
        "A backup of /etc/passwd",
        Low,
    ),
    (
        "/etc/group-",
        "account-file-backup",
        "A backup of /etc/group",
        Low,
    ),
    (
        "/etc/shadow-",
        "account-file-backup",
        "A backup of /etc/shadow (password hashes)",
        Medium,
    ),
    (
        "/etc/gshadow-",
        "account-file-backup",
        "A backup of /etc/gshadow",
        Medium,
    ),
];

/// Directories whose files should not ship: (prefix, rule, title, severity).
const LEFTOVER_DIRS: &[(&str, &str, &str, Severity)] = &[
    ("/var/log/", "log-file", "A log file from the build", Low),
    ("/tmp/", "tmp-leftover", "A file left in /tmp", Low),
    ("/var/tmp/", "tmp-leftover", "A file left in /var/tmp", Low),
    ("/var/crash/", "crash-dump", "A crash dump", Medium),
    (
        "/var/lib/systemd/coredump/",
        "crash-dump",
        "A core dump",
        Medium,
    ),
    ("/var/mail/", "mail-spool", "Mail in the spool", Low),
    ("/var/spool/mail/", "mail-spool", "Mail in the spool", Low),
    (
        "/var/spool/cron/",
        "cron-spool",
        "A user crontab from the build",
        Low,
    ),
    (
        "/var/lib/dhcp/",
        "dhcp-lease",
        "A DHCP lease from the build",
        Low,
    ),
    (
        "/var/lib/dhclient/",
        "dhcp-lease",
        "A DHCP lease from the build",
        Low,
    ),
];

/// Package caches, reported once each with their size.
const PACKAGE_CACHES: &[&str] = &[
    "/var/cache/apt/archives/",
    "/var/cache/dnf/",
    "/var/cache/yum/",
    "/var/cache/zypp/packages/",
    "/var/cache/apk/",
];

impl Auditor for HygieneAuditor {
    fn id(&self) -> &'static str {
        "hygiene"
    }
    fn version(&self) -> &'static str {
        "1"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut out = Output::default();
        for v in ctx.image.volumes() {
            if v.kind == Some(FsKind::Luks) {
                out.findings.push(Finding::new(
                    Category::Hygiene,
                    "luks-container",
                    "A LUKS container: every clone of the image shares its master key",
                    High,
                    Some(v.partition.number),
                    None,
                ));
            }
        }
        let Some(root) = ctx.inspection.root_partition else {
            return Ok(out);
        };
        let fs = ctx.image.filesystem(root).map_err(|e| e.to_string())?;
        let mut c = Checker {
            fs: &*fs,
            root,
            out: &mut out,
        };
        c.sshd();
        c.accounts();
        c.ssh_keys_and_homes(ctx);
        c.instance_state(ctx);
        c.leftovers(ctx);
        c.cloud_init(ctx);
        c.rsyslog();
        Ok(out)
    }
}

struct Checker<'a> {
    fs: &'a dyn Filesystem,
    root: u32,
    out: &'a mut Output,
}

impl Checker<'_> {
    fn add(&mut self, rule: &str, title: &str, severity: Severity, path: &str) -> &mut Finding {
        self.out.findings.push(Finding::new(
            Category::Hygiene,
            rule,
            title,
            severity,
            Some(self.root),
            Some(path.to_string()),
        ));
        let last = self.out.findings.len() - 1;
        &mut self.out.findings[last]
    }

    fn text(&self, path: &str) -> Option<String> {
        self.fs
            .read_file(path.as_bytes(), CONFIG_LIMIT)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn non_empty_file(&self, path: &str) -> bool {
        self.fs
            .stat(path.as_bytes())
            .is_ok_and(|m| m.kind == FileKind::File && m.size > 0)
    }

    /// sshd: the first value of a keyword wins; drop-ins are included first (as
    /// Debian's and Fedora's `Include` at the top of sshd_config does).
    fn sshd(&mut self) {
        let main = "/etc/ssh/sshd_config";
        let Some(main_text) = self.text(main) else {
            return; // no OpenSSH server
        };
        let mut files: Vec<(String, String)> = Vec::new();
        if let Ok(entries) = self.fs.read_dir(b"/etc/ssh/sshd_config.d") {
            let mut names: Vec<String> = entries
                .iter()
                .map(|e| imagefs::show(&e.name))
                .filter(|n| n.ends_with(".conf"))
                .collect();
            names.sort();
            for n in names {
                let p = format!("/etc/ssh/sshd_config.d/{n}");
                if let Some(t) = self.text(&p) {
                    files.push((p, t));
                }
            }
        }
        files.push((main.into(), main_text));
        let first = |key: &str| -> Option<(String, String)> {
            for (path, text) in &files {
                for line in text.lines() {
                    let line = line.trim();
                    let mut words = line.split_whitespace();
                    let Some(k) = words.next() else { continue };
                    if k.eq_ignore_ascii_case("match") {
                        break; // what follows applies to some connections only
                    }
                    if k.eq_ignore_ascii_case(key) {
                        return Some((path.clone(), words.next().unwrap_or("").to_lowercase()));
                    }
                }
            }
            None
        };
        if let Some((path, v)) = first("PermitRootLogin") {
            if v == "yes" {
                self.add(
                    "ssh-root-password-login",
                    "sshd permits root to log in with a password (PermitRootLogin yes)",
                    High,
                    &path,
                )
                .excerpt = Some(format!("PermitRootLogin {v}"));
            }
        }
        match first("PasswordAuthentication") {
            Some((_, v)) if v == "no" => {}
            found => {
                let (path, shown) = match found {
                    Some((p, v)) => (p, format!("PasswordAuthentication {v}")),
                    None => (
                        main.to_string(),
                        "PasswordAuthentication not set (default yes)".into(),
                    ),
                };
                self.add(
                    "ssh-password-authentication",
                    "sshd accepts passwords: shared AMIs should allow key pairs only",
                    Medium,
                    &path,
                )
                .excerpt = Some(shown);
            }
        }
    }

    /// /etc/shadow and /etc/passwd.
    fn accounts(&mut self) {
        if let Some(shadow) = self.text("/etc/shadow") {
            for (i, line) in shadow.lines().enumerate() {
                let mut f = line.split(':');
                let (Some(user), Some(hash)) = (f.next(), f.next()) else {
                    continue;
                };
                let line_no = Some(i as u64 + 1);
                let locked = hash.starts_with('!') || hash.starts_with('*');
                if hash.is_empty() {
                    let f = self.add(
                        "empty-password",
                        "An account with an empty password: anyone can log in",
                        Critical,
                        "/etc/shadow",
                    );
                    f.line = line_no;
                    f.excerpt = Some(format!("{user}::…"));
                } else if !locked && user == "root" {
                    let f = self.add(
                        "root-password-set",
                        "The root account has a usable password hash (not locked)",
                        High,
                        "/etc/shadow",
                    );
                    f.line = line_no;
                    f.excerpt = Some(format!(
                        "root:{}…",
                        hash.chars().take(3).collect::<String>()
                    ));
                } else if !locked {
                    let f = self.add(
                        "password-hash",
                        "An account has a usable password hash",
                        Medium,
                        "/etc/shadow",
                    );
                    f.line = line_no;
                    f.excerpt = Some(format!(
                        "{user}:{}…",
                        hash.chars().take(3).collect::<String>()
                    ));
                }
            }
        }
        if let Some(passwd) = self.text("/etc/passwd") {
            for (i, line) in passwd.lines().enumerate() {
                let f: Vec<&str> = line.split(':').collect();
                if f.len() >= 3 && f[2] == "0" && f[0] != "root" {
                    let user = f[0].to_string();
                    let finding = self.add(
                        "extra-uid0-account",
                        "An account other than root has uid 0",
                        High,
                        "/etc/passwd",
                    );
                    finding.line = Some(i as u64 + 1);
                    finding.excerpt = Some(format!("{user}:x:0:…"));
                }
            }
        }
    }

    fn ssh_keys_and_homes(&mut self, ctx: &Context<'_>) {
        let root = self.root;
        let entries: Vec<&IndexedFile> = ctx
            .files
            .on(root)
            .filter(|f| f.metadata.kind == FileKind::File)
            .collect();
        for f in &entries {
            let p = f.path.as_str();
            if let Some(name) = p.strip_prefix("/etc/ssh/ssh_host_") {
                if name.ends_with("_key") {
                    self.add(
                        "ssh-host-key",
                        "An SSH host private key: every clone would share the host identity",
                        High,
                        p,
                    );
                } else if name.ends_with("_key.pub") {
                    self.add(
                        "ssh-host-public-key",
                        "An SSH host public key (its private half should not ship either)",
                        Medium,
                        p,
                    );
                }
            }
        }
        // Home directories: /root and /home/*.
        for f in &entries {
            let p = f.path.as_str();
            let Some(rel) = home_relative(p) else {
                continue;
            };
            if f.metadata.size > 0
                && (rel == ".ssh/authorized_keys" || rel == ".ssh/authorized_keys2")
            {
                self.add(
                    "authorized-keys",
                    "An authorized_keys file: someone's key can log in to every clone",
                    High,
                    p,
                );
            } else if !rel.contains('/')
                && rel.starts_with('.')
                && rel.ends_with("history")
                && f.metadata.size > 0
            {
                self.add(
                    "shell-history",
                    "A shell history: commands typed on the build machine (often with keys)",
                    Medium,
                    p,
                );
            } else if HOME_CREDENTIALS.contains(&rel) {
                self.add(
                    "credentials-file",
                    "A credentials file in a home directory",
                    High,
                    p,
                );
            }
        }
    }

    fn instance_state(&mut self, ctx: &Context<'_>) {
        match self.text("/etc/machine-id") {
            Some(t) if !t.trim().is_empty() && t.trim() != "uninitialized" => {
                self.add(
                    "machine-id",
                    "/etc/machine-id is set: every clone would share one machine id",
                    Medium,
                    "/etc/machine-id",
                );
            }
            _ => {}
        }
        for (path, rule, title, severity) in INSTANCE_STATE {
            if self.non_empty_file(path) {
                self.add(rule, title, *severity, path);
            }
        }
        for f in ctx.files.on(self.root) {
            let p = f.path.as_str();
            if f.metadata.kind != FileKind::File {
                continue;
            }
            if p.starts_with("/var/lib/NetworkManager/") && p.ends_with(".lease") {
                self.add("dhcp-lease", "A DHCP lease from the build", Low, p);
            }
            if p.starts_with("/etc/NetworkManager/system-connections/") {
                if let Some(t) = self.text(p) {
                    if t.lines().any(|l| l.trim_start().starts_with("psk=")) {
                        self.add(
                            "networkmanager-psk",
                            "A NetworkManager connection with a Wi-Fi pre-shared key",
                            High,
                            p,
                        );
                    }
                }
            }
        }
    }

    fn leftovers(&mut self, ctx: &Context<'_>) {
        let mut caches: Vec<(u64, u64)> = vec![(0, 0); PACKAGE_CACHES.len()];
        for f in ctx.files.on(self.root) {
            if f.metadata.kind != FileKind::File {
                continue;
            }
            let p = f.path.as_str();
            if let Some(i) = PACKAGE_CACHES.iter().position(|c| p.starts_with(c)) {
                // apt's lock and partial/ directory are not downloaded packages.
                if !p.ends_with("/lock") {
                    caches[i].0 += 1;
                    caches[i].1 += f.metadata.size;
                }
                continue;
            }
            if let Some((_, rule, title, severity)) = LEFTOVER_DIRS
                .iter()
                .find(|(prefix, ..)| p.starts_with(prefix))
            {
                if f.metadata.size > 0 {
                    self.add(rule, title, *severity, p);
                }
                continue;
            }
            let name = p.rsplit('/').next().unwrap_or(p);
            if name.ends_with(".bak") || name.ends_with('~') || name.ends_with(".swp") {
                self.add("backup-file", "A backup or editor swap file", Low, p);
            }
        }
        for (i, (count, bytes)) in caches.into_iter().enumerate() {
            if count > 0 {
                self.add(
                    "package-cache",
                    "Downloaded packages left in the package manager's cache",
                    Low,
                    PACKAGE_CACHES[i].trim_end_matches('/'),
                )
                .excerpt = Some(format!("{count} file(s), {bytes} bytes"));
            }
        }
    }

    fn cloud_init(&mut self, ctx: &Context<'_>) {
        let mut state = false;
        for f in ctx.files.on(self.root) {
            let p = f.path.as_str();
            let Some(rest) = p.strip_prefix("/var/lib/cloud/") else {
                continue;
            };
            if rest == "instance" || rest.starts_with("instances/") {
                state = true;
            }
            if rest.starts_with("instance")
                && rest.ends_with("/user-data.txt")
                && f.metadata.size > 0
            {
                self.add(
                    "cloud-init-user-data",
                    "cloud-init user data from the build instance (it often holds secrets)",
                    High,
                    p,
                );
            }
        }
        if state {
            self.add(
                "cloud-init-state",
                "cloud-init state from the build instance: clones skip first-boot setup",
                Medium,
                "/var/lib/cloud/instance",
            );
        }
    }

    fn rsyslog(&mut self) {
        let mut files = vec!["/etc/rsyslog.conf".to_string()];
        if let Ok(entries) = self.fs.read_dir(b"/etc/rsyslog.d") {
            for e in entries {
                files.push(format!("/etc/rsyslog.d/{}", imagefs::show(&e.name)));
            }
        }
        for path in files {
            let Some(text) = self.text(&path) else {
                continue;
            };
            for (i, line) in text.lines().enumerate() {
                let l = line.trim();
                if l.starts_with('#') {
                    continue;
                }
                let forwards = l.contains("type=\"omfwd\"")
                    || l.split_whitespace()
                        .nth(1)
                        .is_some_and(|a| a.starts_with('@'));
                if forwards {
                    let f = self.add(
                        "remote-syslog",
                        "rsyslog forwards logs to a remote host",
                        Info,
                        &path,
                    );
                    f.line = Some(i as u64 + 1);
                    f.excerpt = Some(l.chars().take(120).collect());
                }
            }
        }
    }
}

/// The part of `path` below a home directory (/root or /home/<user>).
fn home_relative(path: &str) -> Option<&str> {
    if let Some(rest) = path.strip_prefix("/root/") {
        return Some(rest);
    }
    let rest = path.strip_prefix("/home/")?;
    let (_, rel) = rest.split_once('/')?;
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_paths_are_relative_to_their_home() {
        assert_eq!(home_relative("/root/.bash_history"), Some(".bash_history"));
        assert_eq!(
            home_relative("/home/ann/.ssh/authorized_keys"),
            Some(".ssh/authorized_keys")
        );
        assert_eq!(home_relative("/home/ann"), None);
        assert_eq!(home_relative("/etc/passwd"), None);
    }
}
