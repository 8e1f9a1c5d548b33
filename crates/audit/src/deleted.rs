//! Secrets in unallocated space: what deleted files left behind in ext, FAT, XFS
//! and btrfs volumes. A deleted key is still a leaked key: the snapshot carries every block.

use crate::scan::{CHUNK, OVERLAP};
use crate::{Auditor, Category, Context, Finding, Gap, NotExamined, Output};
use blockio::BlockSource;
use std::ops::Range;

pub(crate) struct DeletedDataAuditor;

/// Path shown for findings in unallocated space.
pub(crate) const UNALLOCATED: &str = "<unallocated>";

impl Auditor for DeletedDataAuditor {
    fn id(&self) -> &'static str {
        "deleted-data"
    }
    fn version(&self) -> &'static str {
        "2"
    }
    fn run(&self, ctx: &Context<'_>) -> Result<Output, String> {
        let mut out = Output::default();
        for v in ctx.image.volumes() {
            let (Some(kind), Some(window)) = (v.kind, &v.window) else {
                continue;
            };
            let n = v.partition.number;
            if !kind.readable() || v.problem.is_some() {
                continue; // the coverage auditor reports the whole partition
            }
            let free = match imagefs::unallocated(window, kind) {
                Ok(r) => r,
                Err(e) => {
                    out.not_examined.push(NotExamined {
                        kind: Gap::Unallocated,
                        partition: Some(n),
                        what: format!("unallocated space of {} ({})", v.label(), kind.name()),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            // Holes in the image file read as zeros: no need to read them.
            let data = window.data_ranges().map_err(|e| e.to_string())?;
            for r in intersect(&free, &data) {
                if let Err(e) = scan_range(ctx, &**window, n, v.window_start, r, &mut out) {
                    out.not_examined.push(NotExamined {
                        kind: Gap::Unallocated,
                        partition: Some(n),
                        what: format!("unallocated space of partition {n}"),
                        reason: e,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The parts of `a` that are also in `b`; both sorted and disjoint.
fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start < end {
            out.push(start..end);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

fn scan_range(
    ctx: &Context<'_>,
    window: &dyn BlockSource,
    partition: u32,
    partition_start: u64,
    r: Range<u64>,
    out: &mut Output,
) -> Result<(), String> {
    let mut pos = r.start;
    let mut buf = vec![0u8; CHUNK + OVERLAP];
    while pos < r.end {
        let len = ((r.end - pos) as usize).min(CHUNK + OVERLAP);
        let last = pos + len as u64 >= r.end;
        window
            .read_exact_at(&mut buf[..len], pos)
            .map_err(|e| format!("bytes {pos}..{}: {e}", pos + len as u64))?;
        let report_below = if last { len } else { len - OVERLAP };
        // Free space is mostly zeros: skip the keyword pass over all-zero chunks.
        if buf[..len].iter().any(|&b| b != 0) {
            for m in ctx.scanner.scan(&buf[..len]) {
                if (m.offset as usize) >= report_below {
                    continue;
                }
                let offset = partition_start + pos + m.offset;
                let mut f = Finding::new(
                    Category::Secret,
                    m.rule.id,
                    format!("{} in unallocated space (a deleted file)", m.rule.title),
                    m.rule.severity,
                    Some(partition),
                    Some(UNALLOCATED.into()),
                );
                f.offset = Some(offset);
                f.excerpt = Some(m.excerpt.clone());
                f.fingerprint = m.fingerprint.clone();
                out.findings.push(f);
            }
        }
        out.unallocated_bytes_scanned += report_below as u64;
        pos += report_below as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersection_keeps_only_common_bytes() {
        let free = [0..10, 20..30, 40..50];
        let data = [5..25, 45..100];
        assert_eq!(intersect(&free, &data), vec![5..10, 20..25, 45..50]);
        assert!(intersect(&free, &[]).is_empty());
    }
}
