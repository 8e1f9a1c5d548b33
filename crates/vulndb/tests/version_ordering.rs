//! The version orderings agree with the tools that define them: thousands of random
//! and tricky pairs, each compared by amiforge and by `dpkg --compare-versions` or
//! by rpm's own comparison (`rpm.vercmp` in rpm's Lua). apk-tools is not packaged for
//! this distribution; apk's ordering is checked against its documented rules in the
//! unit tests.

use std::cmp::Ordering;
use std::io::Write;
use std::process::{Command, Stdio};
use vulndb::version::{compare, Scheme};

/// Pieces that exercise each rule: numbers with and without leading zeros, letters,
/// tildes, carets, pluses and dots.
const PIECES: &[&str] = &[
    "0", "1", "2", "9", "10", "01", "001", "100", "a", "b", "z", "rc", "rc1", "alpha", "~", "~~",
    "~rc1", "+", "+b1", ".", ".0", ".1", "el9", "deb12u1", "git", "^", "^git1",
];

/// A deterministic generator, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A run of pieces whose characters all satisfy `allowed`.
fn run(rng: &mut Rng, allowed: &dyn Fn(char) -> bool, parts: usize) -> String {
    let mut s = String::new();
    for _ in 0..parts {
        let p = PIECES[rng.below(PIECES.len())];
        if p.chars().all(allowed) {
            s.push_str(p);
        }
    }
    s
}

/// A version: `[epoch:]digit+run[-run]`, with the characters the scheme allows.
fn version(rng: &mut Rng, allowed: &dyn Fn(char) -> bool) -> String {
    let mut v = String::new();
    if rng.below(5) == 0 {
        v.push_str(&format!("{}:", rng.below(3)));
    }
    v.push_str(&rng.below(12).to_string());
    let n = rng.below(5);
    v.push_str(&run(rng, allowed, n));
    if rng.below(3) != 0 {
        let n = 1 + rng.below(3);
        let r = run(rng, allowed, n);
        v.push('-');
        v.push_str(if r.is_empty() { "1" } else { &r });
    }
    v
}

/// Pairs of versions: half random, half one version and a small change of it, where
/// the tricky cases are.
fn pairs(seed: u64, count: usize, allowed: &dyn Fn(char) -> bool) -> Vec<(String, String)> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|i| {
            let a = version(&mut rng, allowed);
            let b = if i % 2 == 0 {
                version(&mut rng, allowed)
            } else {
                let extra = run(&mut rng, allowed, 1);
                // After the epoch and the first digit: a version starts with a digit.
                let first = a.find(':').map_or(0, |i| i + 1) + 1;
                let cut = first + rng.below(a.len() + 1 - first);
                let mut b = a.clone();
                if !extra.is_empty() {
                    b.insert_str(cut, &extra);
                }
                b
            };
            (a, b)
        })
        .collect()
}

fn sign(o: Ordering) -> i32 {
    match o {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }
}

#[test]
fn dpkg_ordering_agrees_with_dpkg_compare_versions() {
    // dpkg: the upstream part may hold letters, digits, . + ~ (and - when a revision
    // follows); the revision letters, digits, + . ~.
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".+~".contains(c);
    let pairs = pairs(0x00d9_4b6a_2f1e_3c5d, 1500, &allowed);
    let mut script = String::from(
        "while read -r a b; do\n\
         if dpkg --compare-versions \"$a\" lt \"$b\"; then echo -1;\n\
         elif dpkg --compare-versions \"$a\" eq \"$b\"; then echo 0; else echo 1; fi\n\
         done\n",
    );
    script.push('\n');
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("bash runs dpkg");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (a, b) in &pairs {
            writeln!(stdin, "{a} {b}").expect("write a pair");
        }
    }
    let out = child.wait_with_output().expect("dpkg's answers");
    let answers: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("-1, 0 or 1"))
        .collect();
    assert_eq!(answers.len(), pairs.len(), "dpkg answered every pair");
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&answers)
        .filter(|((a, b), want)| sign(compare(Scheme::Dpkg, a, b)) != **want)
        .map(|((a, b), want)| format!("{a} vs {b}: dpkg says {want}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} disagreements: {wrong:#?}",
        wrong.len()
    );
    let equal = answers.iter().filter(|&&a| a == 0).count();
    assert!(
        equal > 0 && equal < answers.len(),
        "the pairs cover every outcome"
    );
}

#[test]
fn rpm_ordering_agrees_with_rpm_vercmp() {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+~^".contains(c);
    let pairs = pairs(0x7a3c_91e5_0b4d_2f68, 5000, &allowed);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let list = dir.path().join("pairs");
    let text: String = pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
    std::fs::write(&list, text).expect("write the pairs");
    let lua = format!(
        "%{{lua: for l in io.lines('{}') do local a, b = l:match('(%S+) (%S+)'); print(rpm.vercmp(a, b) .. ',') end}}",
        list.display()
    );
    let out = Command::new("rpm")
        .args(["--eval", &lua])
        .output()
        .expect("rpm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("-1, 0 or 1"))
        .collect();
    assert_eq!(answers.len(), pairs.len(), "rpm answered every pair");
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&answers)
        .filter(|((a, b), want)| sign(compare(Scheme::Rpm, a, b)) != **want)
        .map(|((a, b), want)| format!("{a} vs {b}: rpm says {want}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} disagreements: {wrong:#?}",
        wrong.len()
    );
}
