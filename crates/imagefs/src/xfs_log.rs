//! Whether an XFS's internal log is clean: a filesystem that was not unmounted
//! has changes in its log that its other metadata may not show yet. This reader
//! does not replay the log, so a dirty one is reported rather than read as if
//! the metadata were complete.
//!
//! The log is a ring of 512-byte basic blocks, each stamped with the cycle (the
//! number of passes over the ring) it was written in. As xfs_repair finds the
//! log's head, the head is where the stamp first differs from the first block's;
//! the last record before it is found by its header's magic number. The log is
//! clean when that record is an unmount record (one operation, flagged
//! XLOG_UNMOUNT_TRANS) ending at the head. Reads are bounded: a binary search for
//! the head, then at most [`MAX_BACK`] blocks back for the record's header.

use blockio::BlockSource;

/// The basic block of the log.
const BB: u64 = 512;
/// A log record header's first word.
const RECORD_MAGIC: u32 = 0xFEED_BABE;
/// A log record holds at most 256 KiB of data, and its headers one basic block per
/// 32 KiB of it: the last header lies within this many blocks of the head.
const MAX_BACK: u64 = 2 * (256 << 10) / BB;
/// The operation flag of an unmount record.
const UNMOUNT_TRANS: u8 = 0x20;
/// Each header block covers this much record data (`XLOG_HEADER_CYCLE_SIZE`).
const HEADER_CYCLE_SIZE: u64 = 32 << 10;

/// What the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogState {
    /// Unmounted cleanly.
    Clean,
    /// Changes remain in the log.
    Dirty,
    /// The log could not be read for this: why.
    Unknown(String),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The state of the log of `blocks` basic blocks starting at byte `start`.
pub(crate) fn state(source: &dyn BlockSource, start: u64, blocks: u64) -> LogState {
    match find(source, start, blocks) {
        Ok(state) => state,
        Err(why) => LogState::Unknown(why),
    }
}

fn find(source: &dyn BlockSource, start: u64, blocks: u64) -> Result<LogState, String> {
    if blocks < 2 {
        return Err(format!("a log of {blocks} basic blocks"));
    }
    let read = |i: u64| -> Result<[u8; BB as usize], String> {
        let mut b = [0u8; BB as usize];
        source
            .read_exact_at(&mut b, start + i * BB)
            .map_err(|e| format!("reading log block {i}: {e}"))?;
        Ok(b)
    };
    // A header block carries its cycle in its second word; every other block in
    // its first.
    let cycle = |i: u64| -> Result<u32, String> {
        let b = read(i)?;
        Ok(match be32(&b, 0) {
            RECORD_MAGIC => be32(&b, 4),
            c => c,
        })
    };
    let first = cycle(0)?;
    // Blocks [0, lo] were written in `first`'s cycle; `hi` is the first that was not
    // (or the end of the ring).
    let (mut lo, mut hi) = (0, blocks);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if cycle(mid)? == first {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let head = hi % blocks;
    for back in 1..=MAX_BACK.min(blocks) {
        let at = (hi + blocks - back) % blocks;
        let b = read(at)?;
        if be32(&b, 0) != RECORD_MAGIC {
            continue;
        }
        let record_cycle = be32(&b, 4);
        // Past the start of the ring going back, the blocks are the previous pass's.
        let wrapped = at >= hi;
        let expected = if wrapped {
            first.wrapping_sub(1)
        } else {
            first
        };
        let lsn_cycle = be32(&b, 16);
        let lsn_block = u64::from(be32(&b, 20));
        if record_cycle != expected || lsn_cycle != record_cycle || lsn_block != at {
            continue;
        }
        let version = be32(&b, 8);
        let len = u64::from(be32(&b, 12));
        let ops = be32(&b, 40);
        let size = u64::from(be32(&b, 320));
        let header_blocks = if version & 2 != 0 && size > HEADER_CYCLE_SIZE {
            size.div_ceil(HEADER_CYCLE_SIZE)
        } else {
            1
        };
        let end = (at + header_blocks + len.div_ceil(BB)) % blocks;
        if ops != 1 || end != head {
            return Ok(LogState::Dirty);
        }
        // The first operation header: tid (its first word replaced by the cycle),
        // length, client, flags.
        let op = read((at + header_blocks) % blocks)?;
        return Ok(if op[9] & UNMOUNT_TRANS != 0 {
            LogState::Clean
        } else {
            LogState::Dirty
        });
    }
    Err(format!(
        "no log record header within {MAX_BACK} blocks before the head (block {head})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of `blocks` basic blocks: `records` are (block, cycle, operations,
    /// data blocks, flags of the first operation); every other block is stamped
    /// with `stamp(block)`.
    fn log(
        blocks: u64,
        records: &[(u64, u32, u32, u64, u8)],
        stamp: impl Fn(u64) -> u32,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; (blocks * BB) as usize];
        for b in 0..blocks {
            let at = (b * BB) as usize;
            bytes[at..at + 4].copy_from_slice(&stamp(b).to_be_bytes());
        }
        for &(block, cycle, ops, data, flags) in records {
            let at = (block * BB) as usize;
            let h = &mut bytes[at..at + BB as usize];
            h[0..4].copy_from_slice(&RECORD_MAGIC.to_be_bytes());
            h[4..8].copy_from_slice(&cycle.to_be_bytes());
            h[8..12].copy_from_slice(&2u32.to_be_bytes());
            h[12..16].copy_from_slice(&((data * BB) as u32).to_be_bytes());
            h[16..20].copy_from_slice(&cycle.to_be_bytes());
            h[20..24].copy_from_slice(&(block as u32).to_be_bytes());
            h[40..44].copy_from_slice(&ops.to_be_bytes());
            h[320..324].copy_from_slice(&32768u32.to_be_bytes());
            let op = ((block + 1) * BB) as usize;
            bytes[op + 9] = flags;
        }
        bytes
    }

    fn state_of(bytes: Vec<u8>) -> LogState {
        let blocks = bytes.len() as u64 / BB;
        state(&blockio::MemorySource::new(bytes), 0, blocks)
    }

    #[test]
    fn an_unmount_record_at_the_head_is_clean_and_anything_after_it_is_not() {
        // mkfs's log: an unmount record at block 0 in cycle 1, the rest cycle 0.
        let fresh = log(64, &[(0, 1, 1, 1, UNMOUNT_TRANS)], |b| u32::from(b < 2));
        assert_eq!(state_of(fresh), LogState::Clean);
        // A transaction written after it, and no unmount record.
        let after = log(64, &[(0, 1, 1, 1, UNMOUNT_TRANS), (2, 1, 3, 2, 0)], |b| {
            u32::from(b < 5)
        });
        assert_eq!(state_of(after), LogState::Dirty);
        // The last record is one operation but not an unmount.
        let other = log(64, &[(0, 1, 1, 1, 0)], |b| u32::from(b < 2));
        assert_eq!(state_of(other), LogState::Dirty);
    }

    #[test]
    fn a_record_before_the_wrap_is_found_going_back_past_block_zero() {
        // The whole ring written in cycle 1, ending with an unmount record at block
        // 62 (its data at 63): the head is back at block 0.
        let wrapped = log(64, &[(62, 1, 1, 1, UNMOUNT_TRANS)], |_| 1);
        assert_eq!(state_of(wrapped), LogState::Clean);
    }

    #[test]
    fn a_log_without_a_record_is_unknown_not_clean() {
        match state_of(vec![0u8; 64 * BB as usize]) {
            LogState::Unknown(why) => assert!(why.contains("no log record header"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(state_of(vec![0u8; 100]), LogState::Unknown(_)));
    }
}
