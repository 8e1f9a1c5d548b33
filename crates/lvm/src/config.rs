//! LVM's text metadata format: `key = value` lines and `name { ... }` sections,
//! where a value is an integer, a quoted string or a `[ ... ]` list of them, and `#`
//! starts a comment. Nesting is bounded, so hostile text cannot exhaust the stack.

/// A value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A string (quoted in the text).
    Str(String),
    /// A list of integers and strings.
    List(Vec<Value>),
    /// A section.
    Section(Section),
}

/// A section: its entries in the order of the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section(pub Vec<(String, Value)>);

impl Section {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// The integer `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The string `key`.
    pub fn string(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    /// The list `key`.
    pub fn list(&self, key: &str) -> Option<Vec<Value>> {
        match self.get(key)? {
            Value::List(l) => Some(l.clone()),
            _ => None,
        }
    }
    /// The strings of the list `key`.
    pub fn strings(&self, key: &str) -> Vec<String> {
        self.list(key)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| match v {
                Value::Str(s) => Some(s),
                _ => None,
            })
            .collect()
    }
    /// The subsection `key`.
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
    /// Every subsection, in order.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
    /// The first subsection (the VG, at the top level).
    pub fn first_section(&self) -> Option<(&str, &Section)> {
        self.sections().next()
    }
}

/// Sections nest four deep in real metadata (vg / logical_volumes / lv / segment).
const MAX_DEPTH: usize = 16;

/// Parses metadata text.
pub fn parse(text: &str) -> Result<Section, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let top = p.section(0)?;
    p.skip();
    if p.at < p.s.len() {
        return Err(format!(
            "unexpected {:?} at byte {}",
            p.s[p.at] as char, p.at
        ));
    }
    Ok(top)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    /// Skips white space and comments.
    fn skip(&mut self) {
        while let Some(&c) = self.s.get(self.at) {
            if c == b'#' {
                while self.s.get(self.at).is_some_and(|&c| c != b'\n') {
                    self.at += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.at += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip();
        self.s.get(self.at).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    /// Entries until `}` (nested) or the end (top level).
    fn section(&mut self, depth: usize) -> Result<Section, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("sections nested too deep"));
        }
        let mut entries = Vec::new();
        loop {
            match self.peek() {
                None if depth == 0 => return Ok(Section(entries)),
                None => return Err(self.error("a section is not closed")),
                Some(b'}') if depth > 0 => {
                    self.at += 1;
                    return Ok(Section(entries));
                }
                Some(_) => {}
            }
            let key = self.word()?;
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    entries.push((key, Value::Section(self.section(depth + 1)?)));
                }
                Some(b'=') => {
                    self.at += 1;
                    let v = match self.peek() {
                        Some(b'[') => {
                            self.at += 1;
                            self.list()?
                        }
                        _ => self.scalar()?,
                    };
                    entries.push((key, v));
                }
                _ => return Err(self.error(&format!("no = or {{ after {key:?}"))),
            }
        }
    }

    fn word(&mut self) -> Result<String, String> {
        self.skip();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_-.+".contains(c))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.error("a name was expected"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn list(&mut self) -> Result<Value, String> {
        let mut items = Vec::new();
        loop {
            match self.peek() {
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::List(items));
                }
                Some(b',') => self.at += 1,
                None => return Err(self.error("a list is not closed")),
                Some(_) => items.push(self.scalar()?),
            }
        }
    }

    fn scalar(&mut self) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.at) {
                        None => return Err(self.error("a string is not closed")),
                        Some(b'"') => {
                            self.at += 1;
                            return Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()));
                        }
                        Some(b'\\') if self.at + 1 < self.s.len() => {
                            out.push(self.s[self.at + 1]);
                            self.at += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.at;
                self.at += 1;
                while self
                    .s
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
                {
                    self.at += 1;
                }
                let word = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                // Floats appear in a few settings amiforge does not use; keep their
                // integer part.
                let int = word.split('.').next().unwrap_or("");
                int.parse()
                    .map(Value::Int)
                    .map_err(|_| self.error(&format!("a bad number {word:?}")))
            }
            _ => Err(self.error("a value was expected")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_text_parses_into_sections_lists_and_values() {
        let t = parse(
            "# comment\nvg0 {\n id = \"abc\"\n seqno = 3\n status = [\"READ\", \"WRITE\"]\n logical_volumes {\n root {\n segment1 {\n stripes = [\n\"pv0\", 0\n]\n }\n }\n }\n}\ncontents = \"Text Format Volume Group\"\nversion = 1\n",
        )
        .unwrap();
        let (name, vg) = t.first_section().unwrap();
        assert_eq!(name, "vg0");
        assert_eq!(vg.int("seqno"), Some(3));
        assert_eq!(vg.strings("status"), ["READ", "WRITE"]);
        let seg = vg
            .section("logical_volumes")
            .unwrap()
            .section("root")
            .unwrap()
            .section("segment1")
            .unwrap();
        assert_eq!(
            seg.list("stripes").unwrap(),
            vec![Value::Str("pv0".into()), Value::Int(0)]
        );
        assert_eq!(t.int("version"), Some(1));
    }

    #[test]
    fn hostile_text_is_an_error_not_a_crash() {
        for bad in [
            "vg {",
            "a = [1, 2",
            "a = \"x",
            "a b",
            &"x {".repeat(100_000),
            "= 1",
            "a = -",
        ] {
            assert!(parse(bad).is_err(), "{bad:.20}");
        }
    }
}
