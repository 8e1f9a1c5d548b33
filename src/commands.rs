//! The commands: inspect, ls, cat, diff.

use crate::cli::{write_json, Format};
use anyhow::{bail, Context, Result};
use imagefs::{show, FileKind, Filesystem, Metadata, WalkLimits};
use inspect::{Image, Report};
use serde::Serialize;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn open(image: &Path) -> Result<Image> {
    crate::input::image(image)
}

pub fn inspect(image: &Path, format: Format) -> Result<()> {
    let report = open(image)?.report();
    match format {
        Format::Json => write_json(&report),
        Format::Text => {
            let mut out = std::io::stdout().lock();
            write_summary(&mut out, &report)?;
            Ok(())
        }
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn write_summary(out: &mut impl Write, r: &Report) -> Result<()> {
    let t = &r.partition_table;
    writeln!(out, "image:         {} ({})", r.image, human_size(r.size))?;
    if let Some(c) = r.source.as_ref().filter(|c| c.format != "raw") {
        writeln!(
            out,
            "container:     {}{} in a {} file, {} of the disk stored",
            c.format,
            c.subformat
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            human_size(c.file_size),
            human_size(c.allocated_bytes)
        )?;
        for b in &c.backing {
            writeln!(out, "  backing file: {b}")?;
        }
        for n in &c.notes {
            writeln!(out, "  note: {n}")?;
        }
    }
    let header = t
        .gpt_header
        .map(|h| format!(", {h} header"))
        .unwrap_or_default();
    writeln!(
        out,
        "table:         {} ({}-byte sectors{header})",
        serde_json::to_value(t.kind)?.as_str().unwrap_or("?"),
        t.sector_size
    )?;
    for note in &t.notes {
        writeln!(out, "  note: {note}")?;
    }
    writeln!(out, "partitions:")?;
    for p in &r.partitions {
        let part = &p.partition;
        let name = part
            .name
            .as_deref()
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default();
        let examined = if p.filesystem.examined {
            ""
        } else {
            " (not examined)"
        };
        let root = if r.root_partition == Some(part.number) {
            " [root]"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:>2}  start {:>12}  size {:>10}  type {}{name}  {}{examined}{root}",
            part.number,
            part.start,
            human_size(part.size),
            part.kind,
            p.filesystem.kind
        )?;
        for note in &p.filesystem.notes {
            writeln!(out, "        note: {note}")?;
        }
    }
    let os =
        r.os.as_ref()
            .and_then(|o| o.pretty_name.clone().or(o.id.clone()))
            .unwrap_or_else(|| "unknown".into());
    writeln!(out, "os:            {os}")?;
    writeln!(
        out,
        "architecture:  {}",
        r.architecture.as_deref().unwrap_or("unknown")
    )?;
    writeln!(
        out,
        "boot mode:     {}",
        serde_json::to_value(r.boot_mode)?.as_str().unwrap_or("?")
    )?;
    for e in &r.boot_evidence {
        writeln!(out, "  because {e}")?;
    }
    if r.kernels.is_empty() {
        writeln!(out, "kernels:       none found")?;
    }
    for k in &r.kernels {
        let yn = |b| if b { "yes" } else { "no" };
        writeln!(
            out,
            "kernel:        {} (ena: {}, nvme: {})",
            k.version,
            yn(k.ena),
            yn(k.nvme)
        )?;
    }
    if r.not_examined.is_empty() {
        writeln!(out, "not examined:  nothing")?;
    } else {
        writeln!(out, "not examined:")?;
        for n in &r.not_examined {
            writeln!(out, "  {}: {}", n.what, n.reason)?;
        }
    }
    Ok(())
}

fn filesystem(image: &Image, partition: Option<&str>, path: &Path) -> Result<Box<dyn Filesystem>> {
    let number = match partition {
        Some(name) => image.volume_number(name).with_context(|| {
            format!(
                "{}: no partition or logical volume {name:?}",
                path.display()
            )
        })?,
        None => match image.root_partition() {
            Some(n) => n,
            None => {
                // No OS on it: fall back to the only readable filesystem, if there is one.
                let readable: Vec<u32> = image
                    .volumes()
                    .iter()
                    .filter(|v| v.open().is_ok())
                    .map(|v| v.partition.number)
                    .collect();
                match readable.as_slice() {
                    [n] => *n,
                    [] => bail!("{}: no readable filesystem", path.display()),
                    many => bail!(
                        "{}: no root filesystem found; choose one with --partition ({many:?})",
                        path.display()
                    ),
                }
            }
        },
    };
    Ok(image.filesystem(number)?)
}

/// One entry of an `ls` listing.
#[derive(Serialize)]
struct Listed {
    /// Path inside the image; bytes that are not UTF-8 are shown as \xNN.
    path: String,
    #[serde(flatten)]
    metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn mode_string(m: &Metadata) -> String {
    let mut s = String::with_capacity(10);
    s.push(m.kind.letter());
    for shift in [6, 3, 0] {
        let bits = (m.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn ls(
    image: &Path,
    path: &OsStr,
    long: bool,
    recursive: bool,
    partition: Option<&str>,
    format: Format,
) -> Result<()> {
    let img = open(image)?;
    let fs = filesystem(&img, partition, image)?;
    let path = path.as_bytes();
    let mut entries: Vec<(Vec<u8>, Metadata)> = Vec::new();
    let meta = fs
        .metadata(path)
        .with_context(|| image.display().to_string())?;
    let dir = if meta.kind == FileKind::Symlink {
        imagefs::resolve(&*fs, path)?
    } else {
        path.to_vec()
    };
    let is_dir = fs
        .metadata(&dir)
        .map(|m| m.kind == FileKind::Dir)
        .unwrap_or(false);
    if !is_dir {
        entries.push((path.to_vec(), meta));
    } else if recursive {
        let outcome = imagefs::walk(&*fs, &dir, WalkLimits::default(), |e| {
            entries.push((e.path.clone(), e.metadata.clone()))
        });
        // A partial listing is still a listing: what could not be read is named on
        // stderr and the command goes on (exit 0), as `ls -R` does past a bad entry.
        for p in &outcome.problems {
            tracing::warn!("not listed: {}: {}", p.path, p.reason);
        }
        if !outcome.problems.is_empty() {
            tracing::warn!(
                "{} entries could not be listed; everything else is",
                outcome.problems.len()
            );
        }
    } else {
        let mut list = fs
            .read_dir(&dir)
            .with_context(|| image.display().to_string())?;
        list.sort_by(|a, b| a.name.cmp(&b.name));
        entries.extend(
            list.into_iter()
                .map(|e| (imagefs::join(&[e.name]), e.metadata)),
        );
        // Show names relative to the directory, like ls.
        for (p, _) in &mut entries {
            p.remove(0);
        }
    }
    let target = |p: &[u8], m: &Metadata| {
        if m.kind != FileKind::Symlink {
            return None;
        }
        let full = if p.starts_with(b"/") {
            p.to_vec()
        } else {
            imagefs::join(&[dir.clone(), p.to_vec()])
        };
        fs.read_link(&full).ok()
    };
    match format {
        Format::Json => {
            let listed: Vec<Listed> = entries
                .iter()
                .map(|(p, m)| Listed {
                    path: show(p),
                    metadata: m.clone(),
                    target: target(p, m).map(|t| show(&t)),
                })
                .collect();
            write_json(&listed)
        }
        Format::Text => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (p, m) in &entries {
                if long {
                    write!(
                        out,
                        "{} {:>5} {:>5} {:>12} {:>11} ",
                        mode_string(m),
                        m.uid,
                        m.gid,
                        m.size,
                        m.mtime
                    )?;
                }
                out.write_all(p)?;
                if let (true, Some(t)) = (long, target(p, m)) {
                    out.write_all(b" -> ")?;
                    out.write_all(&t)?;
                }
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

pub fn cat(image: &Path, path: &OsStr, partition: Option<&str>, format: Format) -> Result<()> {
    let img = open(image)?;
    let fs = filesystem(&img, partition, image)?;
    let stdout = std::io::stdout().lock();
    match format {
        Format::Text => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
            fs.copy_to(path.as_bytes(), &mut out)
                .with_context(|| image.display().to_string())?;
            out.flush()?;
        }
        Format::Json => {
            // Streamed, so a large file never sits in memory: the content in base64,
            // then its size and SHA-256.
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
            write!(
                out,
                "{{\"path\": {}, \"content_base64\": \"",
                serde_json::to_string(&show(path.as_bytes()))?
            )?;
            let mut tee = HashingWriter {
                inner: base64::write::EncoderWriter::new(
                    &mut out,
                    &base64::engine::general_purpose::STANDARD,
                ),
                hash: sha2::Sha256::default(),
                size: 0,
            };
            fs.copy_to(path.as_bytes(), &mut tee)
                .with_context(|| image.display().to_string())?;
            let HashingWriter {
                mut inner,
                hash,
                size,
            } = tee;
            let out = inner.finish()?;
            use sha2::Digest;
            writeln!(
                out,
                "\", \"size\": {size}, \"sha256\": \"{:x}\"}}",
                hash.finalize()
            )?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Passes bytes on while hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hash: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The blocks of `ebs::BLOCK_SIZE` bytes that differ between two disks, found by
/// reading both where either holds data (a disk shorter than the other reads as
/// zeros past its end).
fn differing_blocks(
    a: &dyn blockio::BlockSource,
    b: &dyn blockio::BlockSource,
) -> Result<Vec<u64>> {
    let block = ebs::BLOCK_SIZE;
    let size = a.len().max(b.len());
    let mut candidates: Vec<u64> = Vec::new();
    for r in a.data_ranges()?.into_iter().chain(b.data_ranges()?) {
        candidates.extend(r.start / block..r.end.div_ceil(block));
    }
    candidates.sort_unstable();
    candidates.dedup();
    let read = |s: &dyn blockio::BlockSource, buf: &mut [u8], at: u64| -> Result<()> {
        let inside = s.len().saturating_sub(at).min(buf.len() as u64) as usize;
        s.read_exact_at(&mut buf[..inside], at)?;
        buf[inside..].fill(0);
        Ok(())
    };
    let (mut x, mut y) = (vec![0u8; block as usize], vec![0u8; block as usize]);
    let mut changed = Vec::new();
    for i in candidates.into_iter().filter(|i| i * block < size) {
        read(a, &mut x, i * block)?;
        read(b, &mut y, i * block)?;
        if x != y {
            changed.push(i);
        }
    }
    Ok(changed)
}

#[derive(Serialize)]
struct DiffOutput<'a> {
    first: String,
    second: String,
    /// "ListChangedBlocks" or "compared".
    method: &'static str,
    #[serde(flatten)]
    diff: &'a inspect::diff::Diff,
}

pub fn diff(first: &Path, second: &Path, format: Format) -> Result<()> {
    let listed = crate::input::changed_blocks(first, second)?;
    let a = open(first)?;
    let b = open(second)?;
    let (method, changed) = match listed {
        Some(blocks) => ("ListChangedBlocks", blocks),
        None => ("compared", differing_blocks(&**a.source(), &**b.source())?),
    };
    let diff = inspect::diff::compare(&a, &b, &changed, ebs::BLOCK_SIZE);
    let out = DiffOutput {
        first: first.display().to_string(),
        second: second.display().to_string(),
        method,
        diff: &diff,
    };
    match format {
        Format::Json => write_json(&out),
        Format::Text => {
            let mut o = std::io::stdout().lock();
            writeln!(
                o,
                "{} → {}: {} blocks changed ({}, {method})",
                out.first,
                out.second,
                diff.changed_blocks,
                human_size(diff.changed_bytes)
            )?;
            for t in &diff.table_changes {
                writeln!(o, "  partition table: {t}")?;
            }
            if diff.changed_outside_partitions > 0 {
                writeln!(
                    o,
                    "  {} blocks outside any partition",
                    diff.changed_outside_partitions
                )?;
            }
            for p in &diff.partitions {
                let blocks = p
                    .changed_blocks
                    .map(|n| format!("{n} blocks changed"))
                    .unwrap_or_else(|| "a logical volume".into());
                writeln!(
                    o,
                    "{} ({}): {blocks}",
                    p.label,
                    p.filesystem.as_deref().unwrap_or("no filesystem read")
                )?;
                if let Some(why) = &p.not_examined {
                    writeln!(o, "  files not compared: {why}")?;
                }
                if let Some(f) = &p.files {
                    for (mark, paths) in [("+", &f.added), ("-", &f.removed), ("M", &f.modified)] {
                        for path in paths {
                            writeln!(o, "  {mark} {path}")?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
