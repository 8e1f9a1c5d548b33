//! Boots a disk image in QEMU and checks, on its consoles, each step a cloud
//! instance's first boot goes through: the firmware finds the loader, the loader
//! runs, the kernel starts, systemd reaches multi-user, cloud-init runs the user
//! data, and the SSH host keys exist.
//!
//! - **Machine**: an x86_64 image boots in `qemu-system-x86_64` (q35), an arm64
//!   image in `qemu-system-aarch64` (virt, a Neoverse N1 as in Graviton2).
//! - **Firmware**: UEFI with OVMF, or AAVMF on arm64 (a private copy of its
//!   variable store); legacy BIOS with SeaBIOS (QEMU's default, x86_64 only).
//! - **Acceleration**: KVM when `/dev/kvm` can be opened and the guest is of the
//!   host's architecture; if KVM fails (some hosts expose a device that cannot run
//!   the guest), the boot is run again under software emulation, and the outcome
//!   says so.
//! - **The image is never written**: QEMU opens it with `snapshot=on`, which
//!   sends every write to a temporary overlay.
//! - **User data**: a NoCloud seed (a FAT volume labelled `CIDATA`) whose
//!   `runcmd` prints a marker with this run's nonce and the number of SSH host
//!   keys to the serial console, then powers off.
//! - **Bounded**: the run ends at the timeout, at a dead end (a firmware shell,
//!   GRUB's rescue prompt, a kernel panic, emergency mode), or shortly after every
//!   step has passed; at most [`MAX_CONSOLE`] bytes of console are read.

pub mod checks;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use checks::Check;

/// How the machine boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI, with OVMF.
    Uefi,
    /// Legacy BIOS, with SeaBIOS.
    Bios,
}

impl Firmware {
    /// "uefi" or "bios".
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        }
    }
}

/// The guest's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86-64: q35, OVMF or SeaBIOS.
    X86_64,
    /// 64-bit Arm: virt, AAVMF.
    Arm64,
}

impl Arch {
    /// The QEMU system emulator, and the Debian package that has it.
    fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }

    /// Whether this machine's CPU runs the guest natively (so KVM can).
    fn native(self) -> bool {
        match self {
            Arch::X86_64 => cfg!(target_arch = "x86_64"),
            Arch::Arm64 => cfg!(target_arch = "aarch64"),
        }
    }
}

/// Which accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when usable, else software emulation.
    Auto,
    /// KVM only.
    Kvm,
    /// Software emulation (TCG) only.
    Tcg,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The disk image.
    pub image: PathBuf,
    /// Its container format, as QEMU names it (`raw`, `qcow2`, `vmdk`, `vpc`, `vhdx`).
    pub format: String,
    /// The guest's architecture.
    pub arch: Arch,
    /// The firmware.
    pub firmware: Firmware,
    /// The accelerator.
    pub accel: Accel,
    /// The whole boot must be done within this.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Printed in the markers, so that an image cannot pass with a stale log.
    pub nonce: String,
}

/// How one boot went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The firmware it booted with.
    pub firmware: Firmware,
    /// "kvm" or "tcg".
    pub accel: &'static str,
    /// Every step, in order.
    pub checks: Vec<Check>,
    /// Why the run stopped: powered off, timed out, a dead end.
    pub ended: String,
    /// What else happened (a failed KVM attempt, a truncated console).
    pub notes: Vec<String>,
    /// Seconds from start to the last step that passed (the user data marker
    /// when everything passed), and to the end of the run.
    pub seconds_to_last_step: Option<f64>,
    /// Seconds the run took.
    pub seconds: f64,
    /// The serial console, as QEMU wrote it.
    pub serial: Vec<u8>,
}

impl Outcome {
    /// Whether every step passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The first step that did not happen.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.passed)
    }
}

/// Why a boot test could not be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program or firmware file is missing.
    #[error("{0}")]
    Missing(String),
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// QEMU could not start or failed on its own.
    #[error("qemu: {0}")]
    Qemu(String),
}

/// The most console output read per run: a hostile image may print forever.
pub const MAX_CONSOLE: u64 = 32 << 20;
/// How long the guest has to power off by itself once every step has passed.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// The most of QEMU's own messages kept.
const MAX_QEMU_STDERR: usize = 64 << 10;
/// How often the consoles are read.
const POLL: Duration = Duration::from_millis(250);

/// Where Debian, Fedora and Arch keep OVMF: code and the variable store template.
const OVMF: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
];

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Where Debian, Fedora and Arch keep the arm64 UEFI firmware for QEMU's virt
/// machine (AAVMF): code and the variable store template, each 64 MiB.
const AAVMF: &[(&str, &str)] = &[
    (
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/AAVMF/AAVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
        "/usr/share/edk2/aarch64/vars-template-pflash.raw",
    ),
    (
        "/usr/share/edk2/aarch64/QEMU_CODE.fd",
        "/usr/share/edk2/aarch64/QEMU_VARS.fd",
    ),
];

/// The UEFI firmware's code and variable template for `arch`:
/// `AMIFORGE_OVMF_CODE` and `AMIFORGE_OVMF_VARS` (x86_64), or
/// `AMIFORGE_AAVMF_CODE` and `AMIFORGE_AAVMF_VARS` (arm64), when set; else the
/// first pair installed.
fn uefi_firmware(arch: Arch) -> Result<(PathBuf, PathBuf), Error> {
    let (known, name, package) = match arch {
        Arch::X86_64 => (OVMF, "OVMF", "ovmf"),
        Arch::Arm64 => (AAVMF, "AAVMF", "qemu-efi-aarch64"),
    };
    if let (Some(code), Some(vars)) = (
        std::env::var_os(format!("AMIFORGE_{name}_CODE")),
        std::env::var_os(format!("AMIFORGE_{name}_VARS")),
    ) {
        return Ok((code.into(), vars.into()));
    }
    known
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .ok_or_else(|| {
            Error::Missing(format!(
                "no {name} firmware for UEFI boot (install Debian's {package}, or set AMIFORGE_{name}_CODE and AMIFORGE_{name}_VARS)"
            ))
        })
}

fn qemu_binary(arch: Arch) -> Result<PathBuf, Error> {
    let (name, package) = arch.qemu();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Missing(format!("{name} is not installed (Debian's {package})")))
}

/// The NoCloud user data: print the marker and the number of host keys on the
/// consoles (the kernel's, and the first serial port of x86 and of Arm's virt
/// machine, whichever exist), then power off.
pub fn user_data(nonce: &str) -> String {
    let marker = checks::marker(nonce);
    format!(
        "#cloud-config\n\
         runcmd:\n\
         \x20 - [sh, -c, 'n=0; for k in /etc/ssh/ssh_host_*_key; do [ -s \"$k\" ] && n=$((n+1)); done; for c in /dev/console /dev/ttyS0 /dev/ttyAMA0; do echo \"{marker} user-data ran; host keys: $n\" 2>/dev/null > $c || true; done']\n\
         power_state:\n\
         \x20 mode: poweroff\n\
         \x20 delay: now\n\
         \x20 timeout: 30\n"
    )
}

/// Writes a NoCloud seed: a small FAT volume labelled CIDATA holding
/// `user-data` and `meta-data`.
pub fn write_seed(path: &Path, nonce: &str) -> Result<(), Error> {
    const SEED_SIZE: u64 = 2 << 20;
    let err = io("write the NoCloud seed", path);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("create", path))?;
    let result = (|| {
        file.set_len(SEED_SIZE)?;
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
        )?;
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
        {
            let root = fs.root_dir();
            let meta =
                format!("instance-id: amiforge-boot-test-{nonce}\nlocal-hostname: boot-test\n");
            for (name, body) in [("meta-data", meta), ("user-data", user_data(nonce))] {
                let mut f = root.create_file(name)?;
                f.truncate()?;
                std::io::Write::write_all(&mut f, body.as_bytes())?;
            }
        }
        fs.unmount()
    })();
    result.map_err(err)
}

/// Reads at most [`MAX_CONSOLE`] bytes of a console file; whether it was cut.
fn read_console(path: &Path) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let Ok(file) = std::fs::File::open(path) else {
        return (buf, false);
    };
    let _ = file.take(MAX_CONSOLE + 1).read_to_end(&mut buf);
    let cut = buf.len() as u64 > MAX_CONSOLE;
    buf.truncate(MAX_CONSOLE as usize);
    (buf, cut)
}

/// Whether `/dev/kvm` can be opened for the guest.
fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// How long SeaBIOS may take, with no disk, to give up under KVM. It takes a
/// fraction of a second on a healthy host, and about 0.1 s under software
/// emulation; a nested host whose KVM is slower than that is not worth using.
const KVM_PROBE: Duration = Duration::from_secs(1);

/// Whether KVM runs a guest at a useful speed here: SeaBIOS with no disk must
/// reach "No bootable device" within [`KVM_PROBE`].
fn kvm_probe(qemu: &Path, work: &Path) -> Result<(), String> {
    let log = work.join("kvm-probe.log");
    let mut child = Command::new(qemu)
        .args(["-machine", "q35,accel=kvm", "-cpu", "host", "-m", "128"])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-no-user-config",
        ])
        .arg("-chardev")
        .arg(format!("file,id=probe,path={}", log.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu did not start: {e}"))?;
    let start = Instant::now();
    let result = loop {
        std::thread::sleep(Duration::from_millis(20));
        let (text, _) = read_console(&log);
        let text = String::from_utf8_lossy(&text);
        if text.contains("No bootable device") || text.contains("Booting from") {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("qemu exited ({status}) in the KVM probe"));
        }
        if start.elapsed() > KVM_PROBE {
            break Err(format!(
                "SeaBIOS did not finish within {} ms under KVM (it takes about 100 ms emulated)",
                KVM_PROBE.as_millis()
            ));
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Boots the image once and checks every step.
pub fn run(opts: &Options) -> Result<Outcome, Error> {
    let qemu = qemu_binary(opts.arch)?;
    let firmware = match (opts.firmware, opts.arch) {
        (Firmware::Uefi, arch) => Some(uefi_firmware(arch)?),
        (Firmware::Bios, Arch::X86_64) => None,
        (Firmware::Bios, Arch::Arm64) => {
            return Err(Error::Missing(
                "an arm64 machine has no legacy BIOS: it boots with UEFI only".into(),
            ))
        }
    };
    let work = tempfile::tempdir().map_err(io("create a temporary directory", Path::new(".")))?;
    let seed = work.path().join("seed.img");
    write_seed(&seed, &opts.nonce)?;
    let mut notes = Vec::new();
    let accels: &[&'static str] = match opts.accel {
        Accel::Kvm => &["kvm"],
        Accel::Tcg => &["tcg"],
        Accel::Auto if !opts.arch.native() => &["tcg"],
        Accel::Auto if opts.arch == Arch::Arm64 && kvm_available() => &["kvm", "tcg"],
        Accel::Auto if kvm_available() => match kvm_probe(&qemu, work.path()) {
            Ok(()) => &["kvm", "tcg"],
            Err(why) => {
                notes.push(format!(
                    "KVM not used: {why}; booted with software emulation"
                ));
                &["tcg"]
            }
        },
        Accel::Auto => &["tcg"],
    };
    for (i, accel) in accels.iter().enumerate() {
        let attempt = Attempt {
            qemu: &qemu,
            opts,
            firmware: firmware.as_ref(),
            seed: &seed,
            work: work.path(),
            accel,
        };
        match attempt.boot()? {
            Boot::Done(mut outcome) => {
                notes.append(&mut outcome.notes);
                outcome.notes = notes;
                return Ok(outcome);
            }
            Boot::AccelFailed(why) if i + 1 < accels.len() => {
                notes.push(format!(
                    "KVM could not run the guest ({why}); booted again with software emulation"
                ));
            }
            Boot::AccelFailed(why) => return Err(Error::Qemu(why)),
        }
    }
    Err(Error::Qemu("no accelerator to run the guest with".into()))
}

struct Attempt<'a> {
    qemu: &'a Path,
    opts: &'a Options,
    firmware: Option<&'a (PathBuf, PathBuf)>,
    seed: &'a Path,
    work: &'a Path,
    accel: &'static str,
}

enum Boot {
    Done(Outcome),
    AccelFailed(String),
}

/// QEMU's message when KVM stops the guest on an instruction it cannot run.
const KVM_FAILURE: &str = "KVM internal error";

impl Attempt<'_> {
    fn command(&self, serial: &Path, debug: &Path) -> Result<Command, Error> {
        let opts = self.opts;
        let mut cmd = Command::new(self.qemu);
        let machine = match opts.arch {
            Arch::X86_64 => "q35",
            Arch::Arm64 => "virt",
        };
        cmd.arg("-machine")
            .arg(format!("{machine},accel={}", self.accel))
            .args(["-m", &opts.memory_mib.to_string()])
            .args(["-smp", &opts.cpus.to_string()])
            .args(["-display", "none", "-no-reboot", "-no-user-config"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()));
        match opts.arch {
            // SeaBIOS says which disk it boots on QEMU's debug console.
            Arch::X86_64 => {
                cmd.arg("-chardev")
                    .arg(format!("file,id=debugcon,path={}", debug.display()))
                    .args(["-device", "isa-debugcon,iobase=0x402,chardev=debugcon"]);
            }
            // The CPU of AWS Graviton2.
            Arch::Arm64 if self.accel == "tcg" => {
                cmd.args(["-cpu", "neoverse-n1"]);
            }
            Arch::Arm64 => {}
        }
        cmd
            // A network for cloud-init to find, nothing beyond the guest, and no
            // network boot ROM: a disk that does not boot must not turn into PXE.
            .args(["-netdev", "user,id=net0,restrict=on"])
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="])
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=virtio,snapshot=on",
                drive_path(&opts.image),
                opts.format
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                drive_path(self.seed)
            ));
        if self.accel == "kvm" {
            cmd.args(["-cpu", "host"]);
        }
        if let Some((code, vars_template)) = self.firmware {
            let vars = self.work.join(format!("vars-{}.fd", self.accel));
            std::fs::copy(vars_template, &vars).map_err(io("copy", vars_template))?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    drive_path(code)
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    drive_path(&vars)
                ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    fn boot(&self) -> Result<Boot, Error> {
        let serial = self.work.join(format!("serial-{}.log", self.accel));
        let debug = self.work.join(format!("debug-{}.log", self.accel));
        let mut child = self
            .command(&serial, &debug)?
            .spawn()
            .map_err(io("run", self.qemu))?;
        let stderr = child.stderr.take();
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let stderr_reader = {
            let said = said.clone();
            std::thread::spawn(move || {
                let Some(mut s) = stderr else { return };
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk) {
                    let Ok(mut said) = said.lock() else { return };
                    if n == 0 || said.len() > MAX_QEMU_STDERR {
                        return;
                    }
                    said.extend_from_slice(&chunk[..n]);
                }
            })
        };
        let qemu_said = || {
            said.lock()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let start = Instant::now();
        let mut guard = KillOnDrop(Some(child));
        let mut all_passed_at: Option<Instant> = None;
        let mut last_step: Option<(usize, f64)> = None;
        let nonce = &self.opts.nonce;
        let (ended, exited) = loop {
            std::thread::sleep(POLL);
            let (raw, _) = read_console(&serial);
            let (dbg, _) = read_console(&debug);
            let (text, dbg) = (checks::plain(&raw), checks::plain(&dbg));
            let checks = checks::evaluate(&text, &dbg, self.opts.firmware, nonce);
            let passed = checks.iter().take_while(|c| c.passed).count();
            if passed > 0 && last_step.is_none_or(|(n, _)| n < passed) {
                last_step = Some((passed, start.elapsed().as_secs_f64()));
            }
            let status = guard.try_wait().map_err(io("wait for", self.qemu))?;
            if let Some(status) = status {
                break (format!("qemu exited ({status})"), true);
            }
            if self.accel == "kvm" && qemu_said().contains(KVM_FAILURE) {
                break ("stopped: KVM failed".into(), false);
            }
            if let Some(why) = checks::dead_end(&text, &dbg) {
                break (format!("stopped: {why}"), false);
            }
            if passed == checks.len() {
                let at = *all_passed_at.get_or_insert_with(Instant::now);
                if at.elapsed() > POWEROFF_GRACE {
                    break (
                        "stopped: every step passed but the guest did not power off".into(),
                        false,
                    );
                }
            }
            if start.elapsed() > self.opts.timeout {
                break (
                    format!("stopped: timed out after {} s", self.opts.timeout.as_secs()),
                    false,
                );
            }
        };
        if !exited {
            guard.kill();
        }
        drop(guard);
        let _ = stderr_reader.join();
        let stderr = qemu_said();
        if self.accel == "kvm" && stderr.contains(KVM_FAILURE) {
            return Ok(Boot::AccelFailed(KVM_FAILURE.to_lowercase()));
        }
        let (raw, cut) = read_console(&serial);
        let (dbg, _) = read_console(&debug);
        let checks = checks::evaluate(
            &checks::plain(&raw),
            &checks::plain(&dbg),
            self.opts.firmware,
            nonce,
        );
        let mut notes = Vec::new();
        if cut {
            notes.push(format!(
                "the serial console passed {MAX_CONSOLE} bytes; the rest was not read"
            ));
        }
        let stderr = stderr.trim();
        if exited && !stderr.is_empty() && !checks.iter().all(|c| c.passed) {
            notes.push(format!(
                "qemu said: {}",
                stderr.lines().take(5).collect::<Vec<_>>().join(" / ")
            ));
        }
        Ok(Boot::Done(Outcome {
            firmware: self.opts.firmware,
            accel: self.accel,
            checks,
            ended,
            notes,
            seconds_to_last_step: last_step.map(|(_, s)| s),
            seconds: start.elapsed().as_secs_f64(),
            serial: raw,
        }))
    }
}

/// A path for QEMU's `-drive file=`: commas are doubled, as its option syntax wants.
fn drive_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The QEMU process, killed if the run ends any other way than by its exit.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        match self.0.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_a_cidata_volume_with_the_nonce_in_its_user_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed(&path, "abc123").unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "CIDATA");
        let mut text = String::new();
        fs.root_dir()
            .open_file("user-data")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        assert!(text.contains("amiforge-boot-test abc123 user-data ran; host keys: $n"));
        assert!(text.contains("mode: poweroff"));
    }
}
