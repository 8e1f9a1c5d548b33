//! MD5 of many files at once, in SIMD lanes, holding one file per lane.

use md5_many::{Md5Many, Md5State};

/// MD5 hashes 64-byte blocks; a step gives each lane whole blocks.
const MD5_BLOCK: usize = 64;

/// The lanes take no more files while they hold more than this: 16 lanes of files
/// of [`crate::provenance::BATCHED_FILE_MAX`] would hold 256 MiB for each worker.
/// Past it, the lanes hash what they hold until files end and free enough memory.
pub(crate) const LANES_HELD_MAX: usize = 32 << 20;

/// Files hashed side by side: 16, md5-many's width with AVX-512 and two
/// interleaved 8-lane chains with AVX2. On an AVX2 machine (AMD EPYC), the audit's
/// MD5 took 22% fewer samples with 16 files than with 8, and more with 24 (more
/// memory held, more padding); with AVX-512, 32 files hashed no faster than 16 and
/// held more memory.
const STREAMS: usize = 16;

/// Files being hashed side by side, one in each lane ([`STREAMS`]), in steps as
/// long as the shortest file's rest, so that every lane is busy at every step: MD5
/// over many files at a fraction of one stream's cost, holding only one file per
/// lane. When a file ends, the next one takes its lane.
///
/// A step with lanes free hashes as few of md5-many's native widths (8 lanes with
/// AVX2, 16 with AVX-512) as hold the busy lanes, and fills the free lanes among
/// them with copies of a busy lane's bytes (into their throwaway states):
/// md5-many's kernels for fewer streams than a native width are many times slower
/// than the full width (measured: 6 streams alone, 0.2 GB/s; padded to 16, 2.3
/// GB/s). One file alone is hashed at one stream's speed.
///
/// Grouping whole files and hashing each group at once does worse: lanes run as
/// long as the longest file beside them, and files of like lengths are only found
/// among many more files than memory should hold.
pub(crate) struct Md5Lanes<T> {
    engine: Md5Many,
    lanes: Vec<Option<Lane<T>>>,
    /// Each lane's MD5 so far, side by side as md5-many takes them (a free
    /// lane's is thrown away when a file takes the lane).
    states: Vec<Md5State>,
    /// The bytes of the files in lanes.
    held: usize,
}

/// The file in a lane, and how much of it was hashed.
struct Lane<T> {
    file: T,
    hashed: usize,
}

impl<T: AsRef<[u8]>> Lane<T> {
    fn rest(&self) -> &[u8] {
        &self.file.as_ref()[self.hashed..]
    }
}

impl<T: AsRef<[u8]>> Md5Lanes<T> {
    pub(crate) fn new() -> Self {
        let engine = Md5Many::new();
        let lanes = STREAMS.next_multiple_of(engine.lanes().max(1));
        Md5Lanes {
            engine,
            lanes: (0..lanes).map(|_| None).collect(),
            states: vec![Md5State::new(); lanes],
            held: 0,
        }
    }

    /// The bytes of the files in lanes: at most [`LANES_HELD_MAX`] and one file.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held
    }

    /// Puts `file` in a lane, once hashing has freed one and the lanes hold at
    /// most [`LANES_HELD_MAX`] bytes; the files that end meanwhile go to `done`
    /// with their digests.
    pub(crate) fn add(&mut self, file: T, mut done: impl FnMut(T, [u8; 16])) {
        loop {
            self.retire(&mut done);
            if self.held <= LANES_HELD_MAX {
                if let Some(free) = self.lanes.iter().position(Option::is_none) {
                    self.held += file.as_ref().len();
                    self.lanes[free] = Some(Lane { file, hashed: 0 });
                    self.states[free] = Md5State::new();
                    return;
                }
            }
            self.step();
        }
    }

    /// Hashes the files still in lanes, to `done` with their digests.
    pub(crate) fn finish(&mut self, mut done: impl FnMut(T, [u8; 16])) {
        loop {
            self.retire(&mut done);
            if self.lanes.iter().all(Option::is_none) {
                return;
            }
            self.step();
        }
    }

    /// Finishes the files with less than a block left to hash.
    fn retire(&mut self, done: &mut impl FnMut(T, [u8; 16])) {
        for (lane, state) in self.lanes.iter_mut().zip(&mut self.states) {
            if lane.as_ref().is_some_and(|l| l.rest().len() < MD5_BLOCK) {
                let Some(Lane { file, hashed }) = lane.take() else {
                    continue;
                };
                self.held -= file.as_ref().len();
                state.update(&file.as_ref()[hashed..]);
                done(file, state.finalize());
            }
        }
    }

    /// With at least one file in the lanes and at least a block left in each:
    /// hashes, in every busy lane at once, as many whole blocks as the shortest
    /// rest holds.
    fn step(&mut self) {
        let whole_blocks = |l: &Lane<T>| l.rest().len() / MD5_BLOCK * MD5_BLOCK;
        let len = self.lanes.iter().flatten().map(whole_blocks).min();
        let Some(len @ 1..) = len else {
            panic!("a step needs a file, and a block in every busy lane");
        };
        let busy = self.lanes.iter().flatten().count();
        if busy == 1 {
            for (lane, state) in self.lanes.iter_mut().zip(&mut self.states) {
                if let Some(l) = lane {
                    state.update(&l.rest()[..len]);
                    l.hashed += len;
                }
            }
            return;
        }
        let width = busy.next_multiple_of(self.engine.lanes().max(1));
        let width = width.min(self.lanes.len());
        if width < self.lanes.len() {
            self.busy_lanes_first();
        }
        let Some(first) = self.lanes[..width].iter().flatten().next() else {
            unreachable!("a busy lane among the first {width}");
        };
        let pad = &first.rest()[..len];
        let inputs: Vec<&[u8]> = (self.lanes[..width].iter())
            .map(|lane| lane.as_ref().map_or(pad, |l| &l.rest()[..len]))
            .collect();
        self.engine.update_many(&mut self.states[..width], &inputs);
        for l in self.lanes.iter_mut().flatten() {
            l.hashed += len;
        }
    }
}

impl<T> Md5Lanes<T> {
    /// Moves the busy lanes, with their states, before the free ones.
    fn busy_lanes_first(&mut self) {
        let mut next = 0;
        for i in 0..self.lanes.len() {
            if self.lanes[i].is_some() {
                self.lanes.swap(i, next);
                self.states.swap(i, next);
                next += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Md5Lanes;
    use md5::Digest as _;

    /// Bytes from a fixed-seed generator: the same every run.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Hashes `files` in the lanes, in the order given; returns each file's
    /// digest by its index.
    fn lanes_digests(files: &[Vec<u8>]) -> Vec<[u8; 16]> {
        let mut digests = vec![None; files.len()];
        let mut lanes = Md5Lanes::new();
        let mut done = |(i, _): (usize, &Vec<u8>), d| {
            assert!(digests[i].is_none(), "file {i} done twice");
            digests[i] = Some(d);
        };
        for (i, f) in files.iter().enumerate() {
            lanes.add(Indexed(i, f), |Indexed(i, f), d| done((i, f), d));
        }
        lanes.finish(|Indexed(i, f), d| done((i, f), d));
        digests
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.unwrap_or_else(|| panic!("file {i} never done")))
            .collect()
    }

    struct Indexed<'f>(usize, &'f Vec<u8>);
    impl AsRef<[u8]> for Indexed<'_> {
        fn as_ref(&self) -> &[u8] {
            self.1
        }
    }

    fn md5_crate(files: &[Vec<u8>]) -> Vec<[u8; 16]> {
        files.iter().map(|f| md5::Md5::digest(f).into()).collect()
    }

    /// md5-many is young: its lanes, fed steps of whole blocks and then the rest,
    /// must give what RustCrypto's md-5 gives, for lengths around every padding
    /// boundary, long files beside short ones, in orders of every kind.
    #[test]
    fn lanes_agree_with_md5_crate() {
        let mut lengths: Vec<usize> = (0..200).collect();
        lengths.extend([
            511,
            512,
            513,
            4095,
            4096,
            65_535,
            65_536,
            1 << 20,
            (1 << 20) + 7,
        ]);
        lengths.extend((0..60).map(|i| 1000 + i * 37_001 % 300_000));
        let files: Vec<Vec<u8>> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| noise(n, i as u64))
            .collect();
        let expected = md5_crate(&files);
        assert_eq!(lanes_digests(&files), expected, "shortest first");
        let mut reversed = files.clone();
        reversed.reverse();
        let mut expected_reversed = expected.clone();
        expected_reversed.reverse();
        assert_eq!(lanes_digests(&reversed), expected_reversed, "longest first");
        // Interleaved long and short, as a directory walk gives them.
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|&i| (i * 7919) % files.len());
        let shuffled: Vec<Vec<u8>> = order.iter().map(|&i| files[i].clone()).collect();
        let expected_shuffled: Vec<[u8; 16]> = order.iter().map(|&i| expected[i]).collect();
        assert_eq!(lanes_digests(&shuffled), expected_shuffled, "interleaved");
    }

    /// Large files do not pile up in the lanes: past the limit, the lanes hash
    /// what they hold before they take more, and every digest is still right.
    #[test]
    fn lanes_hold_at_most_their_limit_and_one_file() {
        let file = noise(4 << 20, 1);
        let expected: [u8; 16] = md5::Md5::digest(&file).into();
        let mut lanes = Md5Lanes::new();
        let mut digests = Vec::new();
        for _ in 0..16 {
            lanes.add(file.as_slice(), |_, d| digests.push(d));
            assert!(lanes.held() <= super::LANES_HELD_MAX + file.len());
        }
        lanes.finish(|_, d| digests.push(d));
        assert_eq!(digests, vec![expected; 16]);
    }

    /// Fewer files than lanes, no files, and files of one length all end.
    #[test]
    fn every_file_ends_whatever_their_number() {
        for n in [0, 1, 2, 15, 16, 17, 33, 100] {
            let files: Vec<Vec<u8>> = (0..n).map(|i| noise(4096, i as u64)).collect();
            assert_eq!(lanes_digests(&files), md5_crate(&files), "{n} files");
        }
    }
}
