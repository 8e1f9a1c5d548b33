//! Finds secrets in bytes: private keys, cloud credentials, tokens, passwords.
//!
//! The design is the known fast one: one Aho-Corasick pass over the data finds which
//! rules' keywords occur, and only those rules' regexes then run. Most files contain
//! no keyword at all and cost one pass at memory speed.
//!
//! Every [`Match`] carries the rule, the line, the byte offset, a redacted excerpt
//! and a fingerprint; the secret itself never leaves this crate.
//!
//! [`decoder`] reads gzip, xz and zstd data (rotated logs, man pages, initramfs
//! images) as a stream, so the caller bounds what it reads.
//!
//! ```
//! let scanner = secrets::Scanner::new();
//! let found = scanner.scan(b"aws_access_key_id = AKIAZ7QW3ERTY5UIOPAS\n");
//! assert_eq!(found[0].rule.id, "aws-access-key-id");
//! assert!(!found[0].excerpt.contains("AKIAZ7QW3ERTY5UIOPAS"));
//! ```

mod decompress;
mod rules;

pub use decompress::{decoder, Compression, DecompressError};
pub use rules::{rule, Kind, Rule, RULES};

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;
use sha2::Digest;
use std::ops::Range;

/// How far before a keyword hit a match may start (an assignment's name, a URL's
/// scheme): the window starts at the hit's line, at most this far back.
const LOOK_BEHIND: usize = 1 << 10;

/// How bad a finding is. Ordered: `Info < Low < ... < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; never fails a gate.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" => Severity::Info,
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One secret found.
#[derive(Debug, Clone)]
pub struct Match {
    /// The rule that found it.
    pub rule: &'static Rule,
    /// 1-based line of the secret's first byte.
    pub line: u64,
    /// Byte offset of the secret in the scanned data.
    pub offset: u64,
    /// The line, with the secret replaced by a redacted form, at most
    /// [`EXCERPT_MAX`] characters.
    pub excerpt: String,
    /// SHA-256 (hex, first 16 bytes) of the rule id and the secret: stable across
    /// scans, paths and images, so an accepted finding can be allow-listed.
    pub fingerprint: String,
}

/// Longest excerpt reported: enough to recognise the line, short enough for a table.
pub const EXCERPT_MAX: usize = 160;

/// The compiled rule set.
pub struct Scanner {
    keywords: KeywordSet,
    regexes: Vec<Regex>,
}

/// Most keywords in one SIMD ("Teddy") searcher. Measured on this project's
/// benchmark tree: ~100 keywords in one Aho-Corasick automaton scan about 0.3 GB/s
/// (too many distinct bytes for its prefilters); two Teddy searchers of 64 scan
/// about 0.9 GB/s.
const PATTERNS_PER_SEARCHER: usize = 64;

/// One searcher over some of the keywords.
enum Finder {
    /// SIMD literal search (x86-64 with SSSE3 or AVX2).
    Teddy(aho_corasick::packed::Searcher),
    /// An automaton: for short keywords, and where Teddy is not available.
    Automaton(AhoCorasick),
}

impl Finder {
    fn build(patterns: &[&str], short: bool) -> Self {
        if !short {
            let mut b = aho_corasick::packed::Config::new()
                .match_kind(aho_corasick::packed::MatchKind::LeftmostLongest)
                .builder();
            b.extend(patterns);
            if let Some(s) = b.build() {
                return Finder::Teddy(s);
            }
        }
        // The rule table is a constant: a pattern that does not compile is a bug
        // caught by the unit tests, not a runtime condition.
        #[allow(clippy::expect_used)]
        let automaton = AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(patterns)
            .expect("the keyword automaton builds");
        Finder::Automaton(automaton)
    }

    /// The leftmost-longest keyword starting at or after `at`: (start, end, index).
    fn find(&self, data: &[u8], at: usize) -> Option<(usize, usize, usize)> {
        match self {
            Finder::Teddy(s) => s
                .find_in(data, aho_corasick::Span::from(at..data.len()))
                .map(|m| (m.start(), m.end(), m.pattern().as_usize())),
            Finder::Automaton(a) => a
                .find(aho_corasick::Input::new(data).span(at..data.len()))
                .map(|m| (m.start(), m.end(), m.pattern().as_usize())),
        }
    }
}

/// The keyword searchers and, for each pattern, the rules a hit triggers.
struct KeywordSet {
    /// Each searcher with the global ids of its patterns.
    finders: Vec<(Finder, Vec<usize>)>,
    rules: Vec<Vec<usize>>,
}

/// The spellings a case-insensitive keyword is searched in: as written in the rule
/// (lowercase), UPPERCASE, Capitalized and camelCase (`secret_access_key`,
/// `SECRET_ACCESS_KEY`, `Secret_access_key`, `secretAccessKey`). The rule's regex
/// itself ignores case; only the keyword pass is limited to these forms.
fn spellings(keyword: &str) -> Vec<String> {
    let lower = keyword.to_ascii_lowercase();
    let mut capital = lower.clone();
    if let Some(first) = capital.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    let mut camel = String::new();
    let mut up = false;
    for c in lower.chars() {
        if c == '_' || c == '-' {
            up = true;
        } else if up {
            camel.push(c.to_ascii_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    vec![lower.clone(), lower.to_ascii_uppercase(), capital, camel]
}

impl KeywordSet {
    /// `keywords`: (keyword, rule index) pairs.
    fn new(keywords: &[(String, usize)]) -> Self {
        let mut patterns: Vec<&str> = Vec::new();
        let mut rules: Vec<Vec<usize>> = Vec::new();
        for (kw, rule) in keywords {
            match patterns.iter().position(|p| p == kw) {
                Some(at) => rules[at].push(*rule),
                None => {
                    patterns.push(kw);
                    rules.push(vec![*rule]);
                }
            }
        }
        // The search reports the longest keyword at each position. A text holding a
        // keyword also holds every keyword inside it, so a hit also triggers theirs.
        let direct = rules.clone();
        for (k, outer) in patterns.iter().enumerate() {
            for (j, inner) in patterns.iter().enumerate() {
                if j != k && outer.contains(inner) {
                    rules[k].extend(direct[j].iter().copied());
                }
            }
            rules[k].sort_unstable();
            rules[k].dedup();
        }
        // Teddy needs keywords of 4 bytes or more to skip well: the short ones get an
        // automaton of their own.
        let (short, long): (Vec<usize>, Vec<usize>) =
            (0..patterns.len()).partition(|&i| patterns[i].len() < 4);
        let mut finders: Vec<(Finder, Vec<usize>)> = long
            .chunks(PATTERNS_PER_SEARCHER)
            .map(|ids| {
                let group: Vec<&str> = ids.iter().map(|&i| patterns[i]).collect();
                (Finder::build(&group, false), ids.to_vec())
            })
            .collect();
        if !short.is_empty() {
            let group: Vec<&str> = short.iter().map(|&i| patterns[i]).collect();
            finders.push((Finder::build(&group, true), short));
        }
        Self { finders, rules }
    }

    /// Every keyword occurrence in `data`: (start, end, pattern id), by start. A
    /// leftmost-longest search restarted one byte after each hit's start sees every
    /// occurrence (one nested in a longer keyword through `rules`), and between
    /// hits the prefilter skips ahead, which an overlapping search cannot do.
    fn hits(&self, data: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for (finder, ids) in &self.finders {
            let mut at = 0;
            while let Some((start, end, i)) = finder.find(data, at) {
                at = start + 1;
                out.push((start, end, ids[i]));
            }
        }
        out.sort_unstable();
        out
    }
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// Compiles every rule in [`RULES`].
    pub fn new() -> Self {
        let mut keywords: Vec<(String, usize)> = Vec::new();
        for (i, rule) in RULES.iter().enumerate() {
            for kw in rule.keywords {
                if rule.regex.starts_with("(?i)") {
                    keywords.extend(spellings(kw).into_iter().map(|s| (s, i)));
                } else {
                    keywords.push((kw.to_string(), i));
                }
            }
        }
        #[allow(clippy::expect_used)]
        let regexes = RULES
            .iter()
            .map(|r| {
                // ASCII classes and word boundaries: secrets are ASCII, and a
                // Unicode `\b` sends the lazy DFA back to the slow PikeVM at the
                // first non-ASCII byte, which binaries and man pages are full of.
                regex::bytes::RegexBuilder::new(r.regex)
                    .unicode(false)
                    .size_limit(32 << 20)
                    .build()
                    .expect("every rule's regex compiles")
            })
            .collect();
        Self {
            keywords: KeywordSet::new(&keywords),
            regexes,
        }
    }

    /// The rules whose keywords occur in `data`, as indexes into [`RULES`].
    pub fn triggered(&self, data: &[u8]) -> Vec<usize> {
        self.windows(data)
            .iter()
            .enumerate()
            .filter_map(|(i, w)| (!w.is_empty()).then_some(i))
            .collect()
    }

    /// For each rule, the merged byte ranges around its keywords' hits where a match
    /// can lie: from the start of the hit's line (at most [`LOOK_BEHIND`] back) to
    /// the rule's span past the hit, extended to the end of that line.
    fn windows(&self, data: &[u8]) -> Vec<Vec<Range<usize>>> {
        let mut windows: Vec<Vec<Range<usize>>> = vec![Vec::new(); RULES.len()];
        for (hit_start, hit_end, pattern) in self.keywords.hits(data) {
            for &r in &self.keywords.rules[pattern] {
                let back = hit_start.saturating_sub(LOOK_BEHIND);
                let start =
                    memchr::memrchr(b'\n', &data[back..hit_start]).map_or(back, |i| back + i + 1);
                let reach = (hit_end + RULES[r].span()).min(data.len());
                let limit = (reach + LOOK_BEHIND).min(data.len());
                let end = memchr::memchr(b'\n', &data[reach..limit]).map_or(limit, |i| reach + i);
                let w = &mut windows[r];
                match w.last_mut() {
                    Some(last) if start <= last.end => {
                        last.start = last.start.min(start);
                        last.end = last.end.max(end);
                    }
                    _ => w.push(start..end),
                }
            }
        }
        windows
    }

    /// Every secret in `data`, in offset order: in the bytes as they are, and in
    /// PEM blocks wrapped in base64 (see [`Scanner::scan_wrapped`]).
    pub fn scan(&self, data: &[u8]) -> Vec<Match> {
        let mut out = self.scan_plain(data);
        let wrapped = self.scan_wrapped(data);
        if !wrapped.is_empty() {
            out.extend(wrapped);
            out.sort_by_key(|m| m.offset);
        }
        out
    }

    /// Secrets in PEM blocks wrapped in base64, as Kubernetes Secrets (`data:`
    /// values), `.dockercfg` files and environment files carry them: each base64 run
    /// that starts with the encoding of "-----BEGIN" is decoded (at most
    /// [`MAX_WRAPPED`] bytes of it) and scanned. A match is reported at the run's
    /// start, with the run redacted in the excerpt; its fingerprint is the decoded
    /// secret's, the same as the key's unwrapped.
    pub fn scan_wrapped(&self, data: &[u8]) -> Vec<Match> {
        use base64::Engine;
        const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        let mut out = Vec::new();
        let mut after = 0usize;
        for start in memchr::memmem::find_iter(data, BASE64_PEM) {
            if start < after {
                continue;
            }
            // The run: base64 characters, and the line breaks of wrapped output.
            let limit = (start + MAX_WRAPPED * 4 / 3).min(data.len());
            let end = start
                + data[start..limit]
                    .iter()
                    .position(|&b| !(is_base64(b) || b == b'\n' || b == b'\r'))
                    .unwrap_or(limit - start);
            after = end;
            let text: Vec<u8> = data[start..end]
                .iter()
                .copied()
                .filter(|&b| is_base64(b))
                .collect();
            let whole = text.len() - text.len() % 4;
            let Ok(decoded) = ENGINE.decode(&text[..whole]) else {
                continue;
            };
            let line = 1 + memchr::memchr_iter(b'\n', &data[..start]).count() as u64;
            for m in self.scan_plain(&decoded) {
                out.push(Match {
                    rule: m.rule,
                    line,
                    offset: start as u64,
                    excerpt: format!("base64: {}", excerpt(data, start, end)),
                    fingerprint: m.fingerprint,
                });
            }
        }
        out
    }

    /// Every secret in `data` as it is, in offset order.
    fn scan_plain(&self, data: &[u8]) -> Vec<Match> {
        // (rule, start, end). Binaries and message catalogs are full of "Password: "
        // prompts: the generic rule reads text only.
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        let binary = memchr::memchr(0, &data[..data.len().min(BINARY_SNIFF)]).is_some();
        for (r, windows) in self.windows(data).into_iter().enumerate() {
            let rule = &RULES[r];
            if rule.kind == Kind::Generic && binary {
                continue;
            }
            for w in windows {
                for caps in self.regexes[r].captures_iter(&data[w.clone()]) {
                    let Some(m) = caps.get(1).or_else(|| caps.get(0)) else {
                        continue;
                    };
                    if let Some(min) = rule.min_entropy {
                        if entropy(m.as_bytes()) < min {
                            continue;
                        }
                    }
                    // A generic value must look machine-made: letters and digits. Words
                    // ("elevated-privileges", "getpwnam") are prose or code.
                    if rule.kind == Kind::Generic && !letters_and_digits(m.as_bytes()) {
                        continue;
                    }
                    found.push((r, w.start + m.start(), w.start + m.end()));
                }
            }
        }
        // A generic assignment that overlaps a specific rule's match is the same
        // secret found twice: keep the specific finding.
        let specific: Vec<(usize, usize)> = found
            .iter()
            .filter(|(r, ..)| RULES[*r].kind != Kind::Generic)
            .map(|&(_, s, e)| (s, e))
            .collect();
        found.retain(|&(r, s, e)| {
            RULES[r].kind != Kind::Generic || !specific.iter().any(|&(a, b)| s < b && a < e)
        });
        found.sort_by_key(|&(r, start, _)| (start, r));
        let mut out = Vec::with_capacity(found.len());
        let mut line = 1u64;
        let mut counted_to = 0usize;
        for (r, start, end) in found {
            line += memchr::memchr_iter(b'\n', &data[counted_to..start]).count() as u64;
            counted_to = start;
            let rule = &RULES[r];
            out.push(Match {
                rule,
                line,
                offset: start as u64,
                excerpt: excerpt(data, start, end),
                fingerprint: fingerprint(rule.id, &canonical(rule, &data[start..end])),
            });
        }
        out
    }
}

/// The base64 encoding of "-----BEGIN" (its first 14 characters, which do not
/// depend on what follows): how a PEM block wrapped in base64 starts.
const BASE64_PEM: &[u8] = b"LS0tLS1CRUdJTi";
/// The most decoded from one base64-wrapped value: an RSA-8192 PEM is about 6.3 KB,
/// a Kubernetes Secret's value at most 1 MiB.
pub const MAX_WRAPPED: usize = 64 << 10;

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

/// Bytes looked at to tell text from binary (a NUL byte means binary), as git does.
const BINARY_SNIFF: usize = 8 << 10;

fn letters_and_digits(b: &[u8]) -> bool {
    b.iter().any(u8::is_ascii_alphabetic) && b.iter().any(u8::is_ascii_digit)
}

/// Shannon entropy of `bytes`, in bits per byte.
pub fn entropy(bytes: &[u8]) -> f32 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f32;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

/// The redacted form of a secret: its first few characters and its length.
pub fn redact(secret: &[u8]) -> String {
    let shown = if secret.len() >= 16 { 4 } else { 2 };
    let head: String = String::from_utf8_lossy(&secret[..shown.min(secret.len())])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    format!("{head}…[{} chars redacted]", secret.len())
}

/// The secret as its fingerprint sees it. A private key's body keeps only its
/// base64 characters, so that one key has one fingerprint in a PEM file, in a JSON
/// string (`\n` escapes, `\/`), in an indented YAML block or wrapped in base64.
fn canonical<'a>(rule: &Rule, secret: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    if rule.kind != Kind::PrivateKey {
        return std::borrow::Cow::Borrowed(secret);
    }
    let mut out = Vec::with_capacity(secret.len());
    let mut i = 0;
    while i < secret.len() {
        match (secret[i], secret.get(i + 1)) {
            (b'\\', Some(b'n' | b'r' | b't')) => i += 2,
            (b'\\', Some(b'/')) => {
                out.push(b'/');
                i += 2;
            }
            (b, _) => {
                if !b.is_ascii_whitespace() {
                    out.push(b);
                }
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn fingerprint(rule: &str, secret: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(secret);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The line around `start..end`, the secret redacted, clipped to [`EXCERPT_MAX`].
fn excerpt(data: &[u8], start: usize, end: usize) -> String {
    // A pattern may stop short of the token it matched in (a bounded repetition):
    // redact to the end of the token, so no tail of a secret shows.
    let mut end = end;
    while end < data.len() && is_token_byte(data[end]) {
        end += 1;
    }
    let line_start = memchr::memrchr(b'\n', &data[..start]).map_or(0, |i| i + 1);
    // A multi-line secret (a PEM body) ends the excerpt at the secret.
    let line_end = if data[start..end].contains(&b'\n') {
        end
    } else {
        memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |i| end + i)
    };
    let before = printable(&data[line_start..start]);
    let after = printable(&data[end..line_end]);
    let redacted = redact(&data[start..end]);
    // Keep the text nearest the secret when the line is long.
    let room = EXCERPT_MAX.saturating_sub(redacted.chars().count()) / 2;
    let before: String = {
        let chars: Vec<char> = before.chars().collect();
        chars[chars.len().saturating_sub(room)..].iter().collect()
    };
    let after: String = after.chars().take(room).collect();
    format!("{}{redacted}{}", before.trim_start(), after.trim_end())
}

/// Bytes that continue a token: letters, digits and the punctuation of base64,
/// URL-safe base64, percent-encoding and token formats.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=_-.~%".contains(&b)
}

fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM block with a body of `lines` lines of 64 base64 characters.
    fn pem(label: &str, lines: usize) -> Vec<String> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = vec![format!("-----BEGIN {label}-----")];
        for _ in 0..lines {
            out.push(
                (0..64)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        char::from(alphabet[(rng % 64) as usize])
                    })
                    .collect(),
            );
        }
        out.push(format!("-----END {label}-----"));
        out
    }

    fn rules_found(data: &[u8]) -> Vec<&'static str> {
        Scanner::new()
            .scan(data)
            .iter()
            .map(|m| m.rule.id)
            .collect()
    }

    #[test]
    fn a_key_in_a_json_string_with_escaped_line_breaks_is_found() {
        for sep in ["\\n", "\\r\\n"] {
            let key = pem("RSA PRIVATE KEY", 20).join(sep);
            let json = format!("{{\n  \"tls_key\": \"{key}{sep}\"\n}}\n");
            assert_eq!(rules_found(json.as_bytes()), ["private-key-rsa"], "{sep}");
        }
        // JSON's escaped slash inside the body.
        let key = pem("PRIVATE KEY", 12).join("\\n").replace('/', "\\/");
        assert_eq!(
            rules_found(format!("\"k\": \"{key}\"").as_bytes()),
            ["private-key-pkcs8"]
        );
    }

    #[test]
    fn a_key_in_an_indented_yaml_block_scalar_is_found() {
        let key: Vec<String> = pem("EC PRIVATE KEY", 4)
            .iter()
            .map(|l| format!("    {l}"))
            .collect();
        let yaml = format!("tls:\n  key: |\n{}\n  cert: x\n", key.join("\n"));
        assert_eq!(rules_found(yaml.as_bytes()), ["private-key-ec"]);
    }

    #[test]
    fn a_key_wrapped_in_base64_is_found_at_the_encoded_value() {
        use base64::Engine;
        let key = pem("OPENSSH PRIVATE KEY", 10).join("\n") + "\n";
        let wrapped = base64::engine::general_purpose::STANDARD.encode(&key);
        let secret = format!(
            "apiVersion: v1\nkind: Secret\ndata:\n  id_ed25519: {wrapped}\n  other: aGVsbG8=\n"
        );
        let found = Scanner::new().scan(secret.as_bytes());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule.id, "private-key-openssh");
        assert_eq!(found[0].line, 4);
        assert_eq!(
            found[0].offset as usize,
            secret.find("LS0tLS1CRUdJTi").unwrap_or(0)
        );
        assert!(!found[0].excerpt.contains(&wrapped[20..40]), "redacted");
        // The same key unwrapped, or in a JSON string, has the same fingerprint.
        let plain = Scanner::new().scan(key.as_bytes());
        assert_eq!(plain[0].fingerprint, found[0].fingerprint);
        let escaped = format!("\"k\": \"{}\"", key.replace('\n', "\\n"));
        let json = Scanner::new().scan(escaped.as_bytes());
        assert_eq!(json[0].fingerprint, found[0].fingerprint);
        // Wrapped at 76 columns, as base64(1) writes it.
        let lines: Vec<String> = wrapped
            .as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        assert_eq!(
            rules_found(lines.join("\n").as_bytes()),
            ["private-key-openssh"]
        );
    }

    #[test]
    fn a_gcp_key_file_is_found_by_its_structure_whatever_its_key_id_length() {
        let key = pem("PRIVATE KEY", 12).join("\\n");
        for id in [
            "0123456789abcdef0",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            let file = format!(
                "{{\n  \"type\": \"service_account\",\n  \"project_id\": \"p\",\n  \"private_key_id\": \"{id}\",\n  \"private_key\": \"{key}\\n\",\n  \"client_email\": \"a@p.iam.gserviceaccount.com\"\n}}\n"
            );
            let found = rules_found(file.as_bytes());
            assert!(
                found.contains(&"gcp-service-account-key"),
                "{id}: {found:?}"
            );
        }
    }

    #[test]
    fn every_rule_compiles_and_ids_are_unique() {
        let _ = Scanner::new();
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        assert!(RULES.len() >= 40, "the issue asks for at least 40 rules");
    }

    #[test]
    fn every_rule_has_a_keyword_its_regex_implies() {
        for r in RULES {
            assert!(!r.keywords.is_empty(), "{} has no keyword", r.id);
        }
    }

    #[test]
    fn a_match_reports_line_offset_and_never_the_secret() {
        let data = b"first line\nexport GITHUB_TOKEN=ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z5A\n";
        let m = Scanner::new().scan(data);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].rule.id, "github-pat");
        assert_eq!(m[0].line, 2);
        assert_eq!(m[0].offset, 31);
        assert!(m[0]
            .excerpt
            .starts_with("export GITHUB_TOKEN=ghp_…[40 chars"));
        assert!(!m[0].excerpt.contains("aB3dE5"));
    }

    #[test]
    fn keys_may_end_in_a_punctuation_character_of_their_alphabet() {
        // Base64 keys end in '/' or '+' one time in 32, base64url keys in '-' one time
        // in 64: a trailing word boundary would miss them.
        let scanner = Scanner::new();
        let aws = format!(
            "aws_secret_access_key = {}/\n",
            &"wJalrXUtnFEMIK7MDENGbPxRfiCY".repeat(2)[..39]
        );
        let found = scanner.scan(aws.as_bytes());
        assert!(
            found.iter().any(|m| m.rule.id == "aws-secret-access-key"),
            "{found:?}"
        );
        let sendgrid = format!(
            "SENDGRID_API_KEY=SG.{}.{}-\n",
            "a1B2c3D4e5F6g7H8i9J0kL",
            &"Zx9_Qw7-Lm3Np5Rt".repeat(3)[..42]
        );
        let found = scanner.scan(sendgrid.as_bytes());
        assert!(
            found.iter().any(|m| m.rule.id == "sendgrid-api-key"),
            "{found:?}"
        );
    }

    #[test]
    fn a_key_one_character_longer_than_its_format_is_not_that_key() {
        let aws = format!(
            "aws_secret_access_key = {}\n",
            &"wJalrXUtnFEMIK7MDENG/bPxRfiCY+".repeat(2)[..41]
        );
        let found = Scanner::new().scan(aws.as_bytes());
        assert!(
            !found.iter().any(|m| m.rule.id == "aws-secret-access-key"),
            "{found:?}"
        );
    }

    #[test]
    fn a_secret_longer_than_its_pattern_is_redacted_to_its_end() {
        let token = format!("pypi-AgEIcHlwaS5vcmc{}", "Zx9_Qw7-Lm3Np5Rt".repeat(6));
        let m = Scanner::new().scan(format!("password = {token}\n").as_bytes());
        assert_eq!(
            m.len(),
            1,
            "the generic finding of the same secret is dropped"
        );
        assert_eq!(m[0].rule.id, "pypi-token");
        assert!(!m[0].excerpt.contains("Lm3Np5"), "{}", m[0].excerpt);
    }

    #[test]
    fn case_insensitive_keywords_are_searched_in_their_usual_spellings() {
        assert_eq!(
            spellings("secret_access_key"),
            [
                "secret_access_key",
                "SECRET_ACCESS_KEY",
                "Secret_access_key",
                "secretAccessKey"
            ]
        );
        let s = Scanner::new();
        let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        for line in [
            format!("AWS_SECRET_ACCESS_KEY={key}"),
            format!("\"secretAccessKey\": \"{key}\""),
        ] {
            assert_eq!(
                s.scan(line.as_bytes())[0].rule.id,
                "aws-secret-access-key",
                "{line}"
            );
        }
    }

    #[test]
    fn low_entropy_assignments_are_not_secrets() {
        let s = Scanner::new();
        assert!(s.scan(b"password = changeme\n").is_empty());
        assert!(s.scan(b"password: ${DB_PASSWORD}\n").is_empty());
        assert!(s.scan(b"PasswordAuthentication no\n").is_empty());
        assert_eq!(s.scan(b"db_password = 'x7Qp2LmZ9vR4'\n").len(), 1);
    }

    #[test]
    fn the_same_secret_has_the_same_fingerprint_anywhere() {
        let s = Scanner::new();
        let a = s.scan(b"AKIAZ7QW3ERTY5UIOPAS");
        let b = s.scan(b"\n\nkey: AKIAZ7QW3ERTY5UIOPAS\n");
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
    }

    #[test]
    fn severities_order_from_info_to_critical() {
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
        assert_eq!(Severity::parse("medium"), Some(Severity::Medium));
    }
}
