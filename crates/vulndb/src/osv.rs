//! The parts of an OSV record (<https://ossf.github.io/osv-schema/>) that matching
//! needs, and the evaluation of its affected ranges.

use crate::version::{compare, Scheme};
use serde::Deserialize;
use std::cmp::Ordering;

/// Most events of one range that are evaluated (real ranges hold a handful).
const MAX_EVENTS: usize = 4096;

/// One advisory.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// "DSA-5532-1", "CVE-2023-5363", "ALSA-2024:0310".
    pub id: String,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub modified: String,
    /// Set when the advisory was withdrawn: it matches nothing.
    #[serde(default)]
    pub withdrawn: Option<String>,
    /// Other ids of the same vulnerability (CVE ids).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ids this one is derived from.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// One line.
    #[serde(default)]
    pub summary: Option<String>,
    /// Scores of the whole record.
    #[serde(default)]
    pub severity: Vec<Score>,
    /// What it affects.
    #[serde(default)]
    pub affected: Vec<Affected>,
    /// Database-specific fields (some carry a textual severity).
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

/// A severity score: `type` CVSS_V2, CVSS_V3, CVSS_V4, Ubuntu...
#[derive(Debug, Clone, Deserialize)]
pub struct Score {
    /// The scoring system.
    #[serde(rename = "type")]
    pub kind: String,
    /// The vector or rating.
    pub score: String,
}

/// One affected package.
#[derive(Debug, Clone, Deserialize)]
pub struct Affected {
    /// Which package, in which ecosystem.
    #[serde(default)]
    pub package: Option<PackageRef>,
    /// Scores for this package only.
    #[serde(default)]
    pub severity: Vec<Score>,
    /// Version ranges.
    #[serde(default)]
    pub ranges: Vec<Range>,
    /// Exact affected versions.
    #[serde(default)]
    pub versions: Vec<String>,
    /// Ecosystem-specific fields (Debian's `urgency`, Alpine's none).
    #[serde(default)]
    pub ecosystem_specific: Option<serde_json::Value>,
    /// Database-specific fields.
    #[serde(default)]
    pub database_specific: Option<serde_json::Value>,
}

/// A package in an ecosystem ("Debian:12", "openssl").
#[derive(Debug, Clone, Deserialize)]
pub struct PackageRef {
    /// "Debian:12", "Alpine:v3.18", "Rocky Linux:9".
    pub ecosystem: String,
    /// The package name, as the ecosystem keys it (Debian: the source package).
    pub name: String,
}

/// A range of affected versions.
#[derive(Debug, Clone, Deserialize)]
pub struct Range {
    /// ECOSYSTEM, SEMVER or GIT: only ECOSYSTEM ranges order distribution versions.
    #[serde(rename = "type")]
    pub kind: String,
    /// Where affected versions begin and end.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One event of a range; exactly one field is set.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    /// Affected from here ("0": from the first version).
    #[serde(default)]
    pub introduced: Option<String>,
    /// Fixed here.
    #[serde(default)]
    pub fixed: Option<String>,
    /// The last affected version.
    #[serde(default)]
    pub last_affected: Option<String>,
    /// Not affected from here on (an upper bound of the range).
    #[serde(default)]
    pub limit: Option<String>,
}

/// How `version` stands against one affected entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Affected; the version that fixes it, when one is known.
    Affected {
        /// The first fixed version above `version`.
        fixed: Option<String>,
    },
    /// Not affected.
    NotAffected,
}

impl Affected {
    /// Whether `version` is affected, under `scheme`: listed in `versions`, or
    /// inside an ECOSYSTEM range. A range's events are ordered by version; the
    /// version is affected when the last event at or below it introduces.
    pub fn verdict(&self, scheme: Scheme, version: &str) -> Verdict {
        let mut affected = self
            .versions
            .iter()
            .any(|v| compare(scheme, v, version) == Ordering::Equal);
        let mut fixed: Option<&str> = None;
        for range in self.ranges.iter().filter(|r| r.kind == "ECOSYSTEM") {
            let (hit, fix) = range.contains(scheme, version);
            if hit {
                affected = true;
                if let Some(f) = fix {
                    if fixed.is_none_or(|g| compare(scheme, f, g) == Ordering::Less) {
                        fixed = Some(f);
                    }
                }
            }
        }
        if affected {
            Verdict::Affected {
                fixed: fixed.map(str::to_string),
            }
        } else {
            Verdict::NotAffected
        }
    }
}

impl Range {
    /// Whether `version` is in this range, and the fix that ends its part of it.
    fn contains<'a>(&'a self, scheme: Scheme, version: &str) -> (bool, Option<&'a str>) {
        // (version, kind) with "0" below everything.
        let mut events: Vec<(&str, u8)> = Vec::new();
        for e in &self.events {
            if let Some(v) = &e.introduced {
                events.push((v, 0));
            }
            if let Some(v) = &e.fixed {
                events.push((v, 1));
            }
            if let Some(v) = &e.last_affected {
                events.push((v, 2));
            }
            if let Some(v) = &e.limit {
                events.push((v, 3));
            }
        }
        let cmp = |a: &str, b: &str| match (a == "0", b == "0") {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => compare(scheme, a, b),
        };
        // An insertion sort: the standard sorts may panic when a comparison is not a
        // total order, and versions written by whoever wrote the record (an invalid
        // apk version, say) need not order consistently.
        events.truncate(MAX_EVENTS);
        for i in 1..events.len() {
            let mut j = i;
            while j > 0
                && cmp(events[j - 1].0, events[j].0).then(events[j - 1].1.cmp(&events[j].1))
                    == Ordering::Greater
            {
                events.swap(j - 1, j);
                j -= 1;
            }
        }
        let mut affected = false;
        for (i, (at, kind)) in events.iter().enumerate() {
            let here = cmp(version, at);
            match kind {
                0 if here != Ordering::Less => affected = true,
                1 | 3 if here != Ordering::Less => affected = false,
                2 if here == Ordering::Greater => affected = false,
                _ => {
                    if affected {
                        // The next event above the version: its fix, if it is one.
                        let fix = events[i..].iter().find(|(_, k)| *k == 1).map(|(v, _)| *v);
                        return (true, fix);
                    }
                    return (false, None);
                }
            }
        }
        (affected, None)
    }
}

/// A qualitative rating, from a CVSS score or a distribution's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    /// No rating in the record.
    Unrated,
    /// Low, or "unimportant".
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Rating {
    /// Reads a distribution's word ("low", "Moderate", "important", "not yet
    /// assigned").
    pub fn from_word(word: &str) -> Option<Self> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "negligible" | "unimportant" | "low" => Rating::Low,
            "medium" | "moderate" => Rating::Medium,
            "high" | "important" => Rating::High,
            "critical" => Rating::Critical,
            _ => return None,
        })
    }

    /// From a CVSS base score, by the CVSS v3 bands.
    pub fn from_score(score: f64) -> Self {
        match score {
            s if s >= 9.0 => Rating::Critical,
            s if s >= 7.0 => Rating::High,
            s if s >= 4.0 => Rating::Medium,
            s if s > 0.0 => Rating::Low,
            _ => Rating::Unrated,
        }
    }
}

/// The rating of `scores`: the CVSS v3 base score where one parses, else a
/// textual rating.
fn rate(scores: &[Score]) -> Option<(Rating, String)> {
    for s in scores {
        if s.kind == "CVSS_V3" {
            if let Ok(base) = s.score.parse::<cvss::v3::Base>() {
                let value = base.score().value();
                return Some((Rating::from_score(value), format!("CVSS {value:.1}")));
            }
        }
    }
    scores
        .iter()
        .find_map(|s| Rating::from_word(&s.score).map(|r| (r, s.score.clone())))
}

/// A textual severity under one of the keys distributions use.
fn word(value: Option<&serde_json::Value>) -> Option<(Rating, String)> {
    let v = value?;
    ["severity", "urgency"].iter().find_map(|k| {
        let w = v.get(k)?.as_str()?;
        Rating::from_word(w).map(|r| (r, w.to_string()))
    })
}

impl Record {
    /// The rating for `affected` (one of this record's entries), and where it came
    /// from: the entry's own scores, then the record's, then the distribution's
    /// words.
    pub fn rating(&self, affected: &Affected) -> (Rating, String) {
        rate(&affected.severity)
            .or_else(|| rate(&self.severity))
            .or_else(|| word(affected.ecosystem_specific.as_ref()))
            .or_else(|| word(affected.database_specific.as_ref()))
            .or_else(|| word(self.database_specific.as_ref()))
            .unwrap_or((Rating::Unrated, "no rating in the record".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affected(json: &str) -> Affected {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_version_below_the_fix_is_affected_and_the_fix_is_named() {
        let a = affected(
            r#"{"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u2"}]}]}"#,
        );
        assert_eq!(
            a.verdict(Scheme::Dpkg, "3.0.11-1~deb12u1"),
            Verdict::Affected {
                fixed: Some("3.0.11-1~deb12u2".into())
            }
        );
        assert_eq!(
            a.verdict(Scheme::Dpkg, "3.0.11-1~deb12u2"),
            Verdict::NotAffected
        );
        assert_eq!(a.verdict(Scheme::Dpkg, "3.0.12-1"), Verdict::NotAffected);
    }

    #[test]
    fn ranges_with_introduced_last_affected_and_several_windows() {
        let a = affected(
            r#"{"ranges":[{"type":"ECOSYSTEM","events":[
                {"introduced":"1.0"},{"fixed":"1.2"},{"introduced":"2.0"},{"last_affected":"2.3"}]}]}"#,
        );
        let v = |s| a.verdict(Scheme::Rpm, s) != Verdict::NotAffected;
        assert!(!v("0.9"));
        assert!(v("1.0"));
        assert!(v("1.1.5"));
        assert!(!v("1.2"));
        assert!(!v("1.9"));
        assert!(v("2.0"));
        assert!(v("2.3"));
        assert!(!v("2.3.1"));
    }

    #[test]
    fn events_with_versions_that_do_not_order_consistently_do_not_panic() {
        let odd = ["1.0_x", "-r", "~", "1..0", "a", "0", "1.0-rx", "9.9_p", "_"];
        let events: Vec<String> = odd
            .iter()
            .flat_map(|v| {
                [
                    format!(r#"{{"introduced":"{v}"}}"#),
                    format!(r#"{{"fixed":"{v}"}}"#),
                ]
            })
            .collect();
        let a = affected(&format!(
            r#"{{"ranges":[{{"type":"ECOSYSTEM","events":[{}]}}]}}"#,
            events.join(",")
        ));
        for v in odd {
            for scheme in [Scheme::Apk, Scheme::Dpkg, Scheme::Rpm] {
                let _ = a.verdict(scheme, v);
            }
        }
    }

    #[test]
    fn listed_versions_match_exactly_and_other_range_types_are_ignored() {
        let a = affected(
            r#"{"versions":["1.2.4-r2"],"ranges":[{"type":"GIT","events":[{"introduced":"0"}]}]}"#,
        );
        assert_eq!(
            a.verdict(Scheme::Apk, "1.2.4-r2"),
            Verdict::Affected { fixed: None }
        );
        assert_eq!(a.verdict(Scheme::Apk, "1.2.4-r3"), Verdict::NotAffected);
    }

    #[test]
    fn ratings_come_from_cvss_then_from_words() {
        let r: Record = serde_json::from_str(
            r#"{"id":"X","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
                "affected":[{"ecosystem_specific":{"urgency":"low"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.rating(&r.affected[0]).0, Rating::Critical);
        let r: Record = serde_json::from_str(
            r#"{"id":"X","affected":[{"ecosystem_specific":{"urgency":"low"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.rating(&r.affected[0]).0, Rating::Low);
        let r: Record = serde_json::from_str(r#"{"id":"X","affected":[{}]}"#).unwrap();
        assert_eq!(r.rating(&r.affected[0]).0, Rating::Unrated);
    }
}
