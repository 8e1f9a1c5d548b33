//! The version ordering of each package ecosystem, written from each tool's
//! documented rules: dpkg's (deb-version(5)), rpm's `rpmvercmp` with `~` and `^`,
//! and apk-tools' Gentoo-style versions. The tests compare thousands of pairs with
//! `dpkg --compare-versions` and rpm's own comparison.

use std::cmp::Ordering;

/// Which ordering a version string follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Debian and Ubuntu: `[epoch:]upstream[-revision]`.
    Dpkg,
    /// The RHEL family, Fedora, SUSE: `[epoch:]version[-release]`.
    Rpm,
    /// Alpine: `1.2.3[letter][_suffixN...][-rN]`.
    Apk,
}

/// Orders `a` against `b` under `scheme`.
pub fn compare(scheme: Scheme, a: &str, b: &str) -> Ordering {
    match scheme {
        Scheme::Dpkg => dpkg(a.trim(), b.trim()),
        Scheme::Rpm => rpm(a.trim(), b.trim()),
        Scheme::Apk => apk(a.trim().as_bytes(), b.trim().as_bytes()),
    }
}

/// Splits `[epoch:]rest` where the epoch is all digits.
fn epoch(v: &str) -> (&str, &str) {
    match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()) => (e, rest),
        _ => ("0", v),
    }
}

/// Compares two strings of decimal digits by value, however long.
fn numeric(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn dpkg(a: &str, b: &str) -> Ordering {
    let (ea, a) = epoch(a);
    let (eb, b) = epoch(b);
    // The revision follows the last hyphen; without one it is empty, which orders
    // like "0".
    let split = |v: &'_ str| -> (String, String) {
        match v.rsplit_once('-') {
            Some((u, r)) => (u.into(), r.into()),
            None => (v.into(), String::new()),
        }
    };
    let (ua, ra) = split(a);
    let (ub, rb) = split(b);
    numeric(ea, eb)
        .then_with(|| dpkg_part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| dpkg_part(ra.as_bytes(), rb.as_bytes()))
}

/// The weight of one non-digit character in dpkg's ordering: `~` before the end of
/// the string, the end before letters, letters before everything else.
fn dpkg_weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// Compares an upstream version or a revision: alternating runs of non-digits
/// (by [`dpkg_weight`]) and of digits (by value).
fn dpkg_part(a: &[u8], b: &[u8]) -> Ordering {
    let digit = |s: &[u8], i: usize| s.get(i).is_some_and(u8::is_ascii_digit);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (wa, wb) = (
                dpkg_weight(a.get(i).copied()),
                dpkg_weight(b.get(j).copied()),
            );
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        let (si, sj) = (i, j);
        while digit(a, i) {
            i += 1;
        }
        while digit(b, j) {
            j += 1;
        }
        let by_value = numeric(
            std::str::from_utf8(&a[si..i]).unwrap_or("0"),
            std::str::from_utf8(&b[sj..j]).unwrap_or("0"),
        );
        if by_value != Ordering::Equal {
            return by_value;
        }
    }
    Ordering::Equal
}

fn rpm(a: &str, b: &str) -> Ordering {
    let (ea, a) = epoch(a);
    let (eb, b) = epoch(b);
    let split = |v: &'_ str| -> (String, Option<String>) {
        match v.rsplit_once('-') {
            Some((ver, rel)) => (ver.into(), Some(rel.into())),
            None => (v.into(), None),
        }
    };
    let (va, ra) = split(a);
    let (vb, rb) = split(b);
    // As in rpm's comparison of two EVR strings, a version with a release (even an
    // empty one) is newer than the same version without.
    let by_release = || match (&ra, &rb) {
        (Some(ra), Some(rb)) => rpmvercmp(ra.as_bytes(), rb.as_bytes()),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    numeric(ea, eb)
        .then_with(|| rpmvercmp(va.as_bytes(), vb.as_bytes()))
        .then_with(by_release)
}

/// rpm's segment comparison: separators are skipped, `~` sorts before anything
/// (even the end), `^` after the end but before anything else, digit runs compare by
/// value and beat letter runs.
fn rpmvercmp(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let separator = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    let (mut i, mut j) = (0, 0);
    loop {
        while i < a.len() && separator(a[i]) {
            i += 1;
        }
        while j < b.len() && separator(b[j]) {
            j += 1;
        }
        let (ca, cb) = (a.get(i).copied(), b.get(j).copied());
        if ca == Some(b'~') || cb == Some(b'~') {
            if ca != Some(b'~') {
                return Ordering::Greater;
            }
            if cb != Some(b'~') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if ca == Some(b'^') || cb == Some(b'^') {
            return match (ca, cb) {
                (None, _) => Ordering::Less,
                (_, None) => Ordering::Greater,
                (Some(b'^'), Some(b'^')) => {
                    i += 1;
                    j += 1;
                    continue;
                }
                (Some(b'^'), _) => Ordering::Less,
                _ => Ordering::Greater,
            };
        }
        let (Some(ca), Some(_)) = (ca, cb) else {
            break;
        };
        let numeric_run = ca.is_ascii_digit();
        let in_run = |c: &u8| {
            if numeric_run {
                c.is_ascii_digit()
            } else {
                c.is_ascii_alphabetic()
            }
        };
        let ea = i + a[i..].iter().take_while(|c| in_run(c)).count();
        let eb = j + b[j..].iter().take_while(|c| in_run(c)).count();
        if eb == j {
            // Segments of different kinds: a number is newer than letters.
            return if numeric_run {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let (sa, sb) = (&a[i..ea], &b[j..eb]);
        let order = if numeric_run {
            numeric(
                std::str::from_utf8(sa).unwrap_or("0"),
                std::str::from_utf8(sb).unwrap_or("0"),
            )
        } else {
            sa.cmp(sb)
        };
        if order != Ordering::Equal {
            return order;
        }
        i = ea;
        j = eb;
    }
    match (i < a.len(), j < b.len()) {
        (false, false) => Ordering::Equal,
        (true, _) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

/// The kinds of token in an apk version, in the order apk ranks them when two
/// versions differ in kind at the same place: the version that ends (or goes on to
/// a later kind) earlier is the smaller one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Token {
    /// The first number.
    FirstNumber,
    /// A number after a dot.
    Number,
    /// One lowercase letter after a number ("1.0a").
    Letter,
    /// `_alpha`, `_p`...
    Suffix,
    /// The number after a suffix.
    SuffixNumber,
    /// `~` and a commit's hex digits.
    CommitHash,
    /// `-r` and a number.
    Revision,
    End,
    Invalid,
}

/// Suffixes in apk's order; those before [`PLAIN_RELEASE`] mark pre-releases.
const SUFFIXES: [&[u8]; 9] = [
    b"alpha", b"beta", b"pre", b"rc", b"cvs", b"svn", b"git", b"hg", b"p",
];
/// Where a version without a suffix ranks among [`SUFFIXES`].
const PLAIN_RELEASE: usize = 4;

/// One token of an apk version and its text.
struct ApkToken<'a> {
    kind: Token,
    text: &'a [u8],
    number: u64,
    suffix: usize,
}

/// Walks an apk version one token at a time.
struct ApkCursor<'a> {
    rest: &'a [u8],
    token: ApkToken<'a>,
}

impl<'a> ApkCursor<'a> {
    fn new(v: &'a [u8]) -> Self {
        let mut c = Self {
            rest: v,
            token: ApkToken {
                kind: Token::FirstNumber,
                text: b"",
                number: 0,
                suffix: 0,
            },
        };
        c.digits();
        c
    }

    /// Takes the run of characters satisfying `keep` as the token's text.
    fn take(&mut self, keep: impl Fn(u8) -> bool) {
        let n = self.rest.iter().take_while(|&&c| keep(c)).count();
        self.token.text = &self.rest[..n];
        self.rest = &self.rest[n..];
    }

    /// Takes a run of digits as the token's number; none makes the version invalid.
    fn digits(&mut self) {
        self.take(|c| c.is_ascii_digit());
        self.token.number = self.token.text.iter().fold(0u64, |v, c| {
            v.wrapping_mul(10).wrapping_add(u64::from(c - b'0'))
        });
        if self.token.text.is_empty() {
            self.token.kind = Token::Invalid;
        }
    }

    /// Moves to the next token; what may follow what is checked as it goes.
    fn advance(&mut self) {
        let Some(&c) = self.rest.first() else {
            self.token.kind = Token::End;
            return;
        };
        let kind = self.token.kind;
        match c {
            b'a'..=b'z' if kind <= Token::Number => {
                self.token.text = &self.rest[..1];
                self.rest = &self.rest[1..];
                self.token.kind = Token::Letter;
            }
            b'.' | b'0'..=b'9' => {
                if c == b'.' {
                    if kind > Token::Number {
                        self.token.kind = Token::Invalid;
                        return;
                    }
                    self.rest = &self.rest[1..];
                }
                self.token.kind = match kind {
                    Token::FirstNumber | Token::Number => Token::Number,
                    Token::Suffix => Token::SuffixNumber,
                    _ => {
                        self.token.kind = Token::Invalid;
                        return;
                    }
                };
                self.digits();
            }
            b'_' if kind <= Token::SuffixNumber => {
                self.rest = &self.rest[1..];
                self.take(|c| c.is_ascii_lowercase());
                let text = self.token.text;
                match SUFFIXES.iter().position(|s| *s == text) {
                    Some(i) => {
                        self.token.suffix = i;
                        self.token.kind = Token::Suffix;
                    }
                    None => self.token.kind = Token::Invalid,
                }
            }
            b'~' if kind < Token::CommitHash => {
                self.rest = &self.rest[1..];
                self.take(|c| c.is_ascii_hexdigit());
                self.token.kind = if self.token.text.is_empty() {
                    Token::Invalid
                } else {
                    Token::CommitHash
                };
            }
            b'-' if kind < Token::Revision && self.rest.get(1) == Some(&b'r') => {
                self.rest = &self.rest[2..];
                self.token.kind = Token::Revision;
                self.digits();
            }
            _ => self.token.kind = Token::Invalid,
        }
    }
}

/// Two tokens of the same kind.
fn apk_token(a: &ApkToken<'_>, b: &ApkToken<'_>) -> Ordering {
    let leading_zero = |t: &ApkToken<'_>| t.text.first() == Some(&b'0');
    match a.kind {
        // A component with a leading zero compares as text, as in Gentoo's rules.
        Token::Number if leading_zero(a) || leading_zero(b) => a.text.cmp(b.text),
        Token::FirstNumber | Token::Number | Token::SuffixNumber | Token::Revision => {
            a.number.cmp(&b.number)
        }
        Token::Letter => a.text.cmp(b.text),
        Token::Suffix => a.suffix.cmp(&b.suffix),
        _ => a.text.cmp(b.text),
    }
}

fn apk(a: &[u8], b: &[u8]) -> Ordering {
    let (mut ca, mut cb) = (ApkCursor::new(a), ApkCursor::new(b));
    while ca.token.kind == cb.token.kind && ca.token.kind < Token::End {
        let order = apk_token(&ca.token, &cb.token);
        if order != Ordering::Equal {
            return order;
        }
        ca.advance();
        cb.advance();
    }
    let (ka, kb) = (ca.token.kind, cb.token.kind);
    if ka == kb {
        return Ordering::Equal;
    }
    // The same so far, and one goes on: it is the newer one unless what follows is
    // a pre-release suffix.
    let pre_release =
        |c: &ApkCursor<'_>| c.token.kind == Token::Suffix && c.token.suffix < PLAIN_RELEASE;
    if pre_release(&ca) {
        return Ordering::Less;
    }
    if pre_release(&cb) {
        return Ordering::Greater;
    }
    kb.cmp(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    fn check(scheme: Scheme, cases: &[(&str, &str, Ordering)]) {
        for (a, b, want) in cases {
            assert_eq!(compare(scheme, a, b), *want, "{scheme:?}: {a} vs {b}");
            assert_eq!(
                compare(scheme, b, a),
                want.reverse(),
                "{scheme:?}: {b} vs {a}"
            );
        }
    }

    #[test]
    fn dpkg_orders_epochs_tildes_and_revisions() {
        check(
            Scheme::Dpkg,
            &[
                ("1.0", "1.0", Equal),
                ("1.0", "1.0-0", Equal),
                ("1:1.0", "2.0", Greater),
                ("1.0~rc1", "1.0", Less),
                ("1.0~~", "1.0~", Less),
                ("1.0a", "1.0", Greater),
                ("1.0+b1", "1.0a", Greater),
                ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
                ("1.010", "1.9", Greater),
                ("00:1.0", "1.0", Equal),
            ],
        );
    }

    #[test]
    fn rpm_orders_tilde_before_and_caret_after_the_release() {
        check(
            Scheme::Rpm,
            &[
                ("1.0", "1.0", Equal),
                ("1.0~rc1", "1.0", Less),
                ("1.0^git1", "1.0", Greater),
                ("1.0^git1", "1.0.1", Less),
                ("1:1.0-1", "2.0-1", Greater),
                ("1.0a", "1.0", Greater),
                ("1.0", "1.0.a", Less),
                ("1.0.1", "1.0a", Greater),
                ("3.0.7-27.el9", "3.0.7-24.el9", Greater),
                ("3.0.7", "3.0.7-24.el9", Less),
                ("1.01", "1.1", Equal),
            ],
        );
    }

    #[test]
    fn apk_orders_suffixes_letters_and_revisions() {
        check(
            Scheme::Apk,
            &[
                ("1.0", "1.0", Equal),
                ("1.0_alpha1", "1.0_beta1", Less),
                ("1.0_rc1", "1.0", Less),
                ("1.0", "1.0_p1", Less),
                ("1.0", "1.0a", Less),
                ("1.0a", "1.0.1", Less),
                ("1.0-r0", "1.0-r1", Less),
                ("1.0-r9", "1.0-r10", Less),
                ("1.0", "1.0-r0", Less),
                ("1.2.4-r2", "1.2.4_git20230717-r0", Less),
                ("1.01", "1.1", Less),
                ("1.001", "1.01", Less),
                ("3.1.4-r5", "3.1.4-r5", Equal),
                ("2.10", "2.9", Greater),
            ],
        );
    }

    #[test]
    fn hostile_versions_compare_without_panicking() {
        let odd = [
            "",
            ":",
            "-",
            "~",
            "^",
            "_",
            ".",
            "-r",
            "1-",
            ":1",
            "1:",
            "9".repeat(400).as_str(),
            "1.0_",
            "1.0_x",
            "1..0",
            "é",
            "1.0-rx",
        ]
        .map(str::to_string);
        for a in &odd {
            for b in &odd {
                for s in [Scheme::Dpkg, Scheme::Rpm, Scheme::Apk] {
                    let _ = compare(s, a, b);
                }
            }
        }
    }
}
