//! A validating, allocation-light JSON scanner that finds the values of
//! dotted field paths (`user.msisdn`) in one JSON Lines record.
//!
//! Why not a DOM parser: the log tokenizer must run at over a million
//! records a second on two cores, and building a `serde_json::Value` per
//! line (allocating every key and string) costs more than the HMACs. This
//! scanner checks the full JSON grammar (RFC 8259) and reports byte spans;
//! the rewriter splices tokens into the original bytes, so fields it does
//! not touch are copied exactly. Every occurrence of a path is reported,
//! so a duplicated key cannot smuggle an identifier past the tokenizer.

/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 128;
/// Most paths one scan can look for.
pub const MAX_PATHS: usize = 64;

/// A dotted path to a field inside nested objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a.b.c`; empty segments are refused.
    pub fn parse(text: &str) -> Option<Self> {
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// What kind of value a path pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A string; `escaped` when it contains backslash escapes.
    String {
        /// Contains escapes that must be decoded.
        escaped: bool,
    },
    /// A number.
    Number,
    /// `true`, `false` or `null`.
    Literal,
    /// An object or array.
    Container,
}

/// One value found for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Index of the path in the list given to [`scan`].
    pub path: usize,
    /// Byte offset of the value's first byte (the opening quote of a string).
    pub start: usize,
    /// Byte offset just past the value.
    pub end: usize,
    /// Kind of value.
    pub kind: ValueKind,
}

/// Why a record is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed JSON at byte {offset}: {reason}")]
pub struct JsonError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was expected.
    pub reason: &'static str,
}

struct Scanner<'a, 'p> {
    b: &'a [u8],
    i: usize,
    paths: &'p [FieldPath],
    hits: &'p mut Vec<Hit>,
    key_buf: Vec<u8>,
}

type Mask = u64;

impl Scanner<'_, '_> {
    fn err<T>(&self, reason: &'static str) -> Result<T, JsonError> {
        Err(JsonError {
            offset: self.i,
            reason,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8, reason: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(reason)
        }
    }

    /// Scans a string starting at the opening quote; returns whether it had escapes.
    fn string(&mut self) -> Result<bool, JsonError> {
        self.expect(b'"', "expected string")?;
        let mut escaped = false;
        loop {
            // Fast path: skip ordinary bytes.
            let rest = self.b.get(self.i..).unwrap_or_default();
            let n = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let Some(n) = n else {
                self.i = self.b.len();
                return self.err("unterminated string");
            };
            self.i += n;
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return self.err("bad \\u escape");
                                }
                                self.i += 1;
                            }
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                _ => return self.err("control character in string"),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - s
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("bad number"),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("bad fraction");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("bad exponent");
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("bad literal")
        }
    }

    /// Scans a value. `mask` holds the paths whose first `depth` segments
    /// led here; they may match keys of this value if it is an object.
    fn value(&mut self, depth: usize, mask: Mask) -> Result<ValueKind, JsonError> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.peek() {
            Some(b'{') => {
                self.object(depth, mask)?;
                Ok(ValueKind::Container)
            }
            Some(b'[') => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(ValueKind::Container);
                }
                loop {
                    self.ws();
                    // Paths do not descend into arrays.
                    self.value(depth + 1, 0)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(ValueKind::Container);
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => Ok(ValueKind::String {
                escaped: self.string()?,
            }),
            Some(b't') => self.literal(b"true").map(|()| ValueKind::Literal),
            Some(b'f') => self.literal(b"false").map(|()| ValueKind::Literal),
            Some(b'n') => self.literal(b"null").map(|()| ValueKind::Literal),
            Some(b'-' | b'0'..=b'9') => self.number().map(|()| ValueKind::Number),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end of input"),
        }
    }

    fn key_matches(
        &mut self,
        key_start: usize,
        key_end: usize,
        escaped: bool,
        depth: usize,
        mask: Mask,
    ) -> Mask {
        if mask == 0 {
            return 0;
        }
        let raw = self.b.get(key_start + 1..key_end - 1).unwrap_or_default();
        let key: &[u8] = if escaped {
            self.key_buf.clear();
            match unescape(raw) {
                Some(s) => self.key_buf.extend_from_slice(s.as_bytes()),
                None => return 0,
            }
            &self.key_buf
        } else {
            raw
        };
        let mut out = 0;
        for (i, p) in self.paths.iter().enumerate() {
            if mask & (1 << i) != 0 && p.segments.get(depth).is_some_and(|s| s.as_bytes() == key) {
                out |= 1 << i;
            }
        }
        out
    }

    fn object(&mut self, depth: usize, mask: Mask) -> Result<(), JsonError> {
        self.expect(b'{', "expected object")?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let ks = self.i;
            let kesc = self.string()?;
            let ke = self.i;
            let matched = self.key_matches(ks, ke, kesc, depth, mask);
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            let vs = self.i;
            // Paths that end at this key are hits; longer ones descend.
            let mut deeper: Mask = 0;
            let mut ending: Mask = 0;
            for (i, p) in self.paths.iter().enumerate() {
                if matched & (1 << i) != 0 {
                    if p.segments.len() == depth + 1 {
                        ending |= 1 << i;
                    } else {
                        deeper |= 1 << i;
                    }
                }
            }
            let kind = self.value(depth + 1, deeper)?;
            if ending != 0 {
                for i in 0..self.paths.len() {
                    if ending & (1 << i) != 0 {
                        self.hits.push(Hit {
                            path: i,
                            start: vs,
                            end: self.i,
                            kind,
                        });
                    }
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected ',' or '}'"),
            }
        }
    }
}

/// Validates one JSON record (a top-level object) and appends to `hits`
/// every value found at one of `paths`, in document order. At most
/// [`MAX_PATHS`] paths.
pub fn scan(record: &[u8], paths: &[FieldPath], hits: &mut Vec<Hit>) -> Result<(), JsonError> {
    if paths.len() > MAX_PATHS {
        return Err(JsonError {
            offset: 0,
            reason: "too many field paths",
        });
    }
    let mut s = Scanner {
        b: record,
        i: 0,
        paths,
        hits,
        key_buf: Vec::new(),
    };
    s.ws();
    if s.peek() != Some(b'{') {
        return s.err("a record must be a JSON object");
    }
    let all: Mask = if paths.len() == 64 {
        u64::MAX
    } else {
        (1u64 << paths.len()) - 1
    };
    s.object(0, all)?;
    s.ws();
    if s.i != record.len() {
        return s.err("trailing characters after the record");
    }
    Ok(())
}

/// Decodes the inside of a JSON string (without quotes). `None` on a bad
/// escape or an unpaired surrogate.
pub fn unescape(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex = |it: &mut std::str::Chars<'_>| -> Option<u32> {
                    let h: String = it.by_ref().take(4).collect();
                    if h.len() == 4 {
                        u32::from_str_radix(&h, 16).ok()
                    } else {
                        None
                    }
                };
                let hi = hex(&mut chars)?;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if chars.next()? != '\\' || chars.next()? != 'u' {
                        return None;
                    }
                    let lo = hex(&mut chars)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                out.push(char::from_u32(cp)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<FieldPath> {
        p.iter().map(|s| FieldPath::parse(s).unwrap()).collect()
    }

    fn find<'a>(rec: &'a str, p: &[&str]) -> Result<Vec<(usize, &'a str)>, JsonError> {
        let ps = paths(p);
        let mut hits = Vec::new();
        scan(rec.as_bytes(), &ps, &mut hits)?;
        Ok(hits
            .iter()
            .map(|h| (h.path, &rec[h.start..h.end]))
            .collect())
    }

    #[test]
    fn finds_nested_and_duplicate_fields() {
        let rec = r#"{"ts":1,"user":{"msisdn":"+44 7700","x":[{"msisdn":"no"}]},"account_id":"A1","user":{"msisdn":"dup"}}"#;
        assert_eq!(
            find(rec, &["user.msisdn", "account_id"]).unwrap(),
            vec![(0, r#""+44 7700""#), (1, r#""A1""#), (0, r#""dup""#)]
        );
        assert_eq!(
            find(r#"{"a":{"b":12.5e3}}"#, &["a.b"]).unwrap(),
            vec![(0, "12.5e3")]
        );
        assert_eq!(
            find(r#"{"a\u0062":"x"}"#, &["ab"]).unwrap(),
            vec![(0, r#""x""#)]
        );
        assert_eq!(find(r#"{"a":"x"}"#, &["b"]).unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_records() {
        for bad in [
            "",
            "[]",
            "{",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a":01}"#,
            r#"{"a":"x} "#,
            r#"{"a":tru}"#,
            r#"{"a":"\q"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1} x"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":[1 2]}"#,
        ] {
            assert!(find(bad, &["a"]).is_err(), "{bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(find(&deep, &["a"]).unwrap_err().reason, "nesting too deep");
    }

    #[test]
    fn unescapes() {
        assert_eq!(
            unescape(br#"a\"b\\c\u00e9\ud83d\ude00"#).unwrap(),
            "a\"b\\cé😀"
        );
        assert!(unescape(br#"\ud83d"#).is_none());
        assert!(unescape(br#"\x"#).is_none());
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_serde_json_on_validity(s in "\\PC{0,40}") {
            let ours = scan(s.as_bytes(), &[], &mut Vec::new()).is_ok();
            let theirs = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).is_ok();
            proptest::prop_assert_eq!(ours, theirs, "{:?}", s);
        }

        #[test]
        fn finds_what_serde_json_finds(v in "[a-zA-Z0-9 +@.\\\\\"é]{0,20}", other in 0i64..1000) {
            let rec = serde_json::json!({"n": other, "user": {"msisdn": v, "z": [1, {"msisdn": 2}]}}).to_string();
            let ps = paths(&["user.msisdn"]);
            let mut hits = Vec::new();
            scan(rec.as_bytes(), &ps, &mut hits).unwrap();
            proptest::prop_assert_eq!(hits.len(), 1);
            let span = &rec[hits[0].start..hits[0].end];
            let decoded: String = serde_json::from_str(span).unwrap();
            proptest::prop_assert_eq!(decoded, v);
        }
    }
}
