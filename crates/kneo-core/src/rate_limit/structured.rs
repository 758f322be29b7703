//! The part of Structured Field Values ([RFC 9651]) that the RateLimit fields
//! use: Lists and Dictionaries of Items with Parameters.
//!
//! The parsing algorithms are those of RFC 9651 §4.2, step by step, so that a
//! field this parser accepts is one the RFC accepts and a field it refuses is
//! one the RFC says to ignore whole. Every bare item type is recognised
//! (Integer, Decimal, String, Token, Byte Sequence, Boolean, Date, Display
//! String), but only the values the rate-limit fields need are kept: Integers,
//! and Strings and Tokens as names. The rest is checked and then dropped.
//!
//! Documented leniencies: leading and trailing HTAB are discarded along with SP
//! (HTTP implementations strip both before a value reaches us), and a Byte
//! Sequence's base64 is checked for its alphabet, not decoded (its content,
//! the partition key, is not used).
//!
//! Why not the `sfv` crate: every release depends on `base64 0.22` while the
//! workspace is on `base64 0.23` (hyper-util, reqwest), which `deny.toml`
//! refuses as a second version, and its current release needs a newer Rust
//! than the workspace's `rust-version`.
//!
//! [RFC 9651]: https://www.rfc-editor.org/rfc/rfc9651

/// A bare item, reduced to what the rate-limit fields read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Bare {
    /// An Integer (at most 15 digits, so it fits an `i64`).
    Integer(i64),
    /// A String or a Token: a name.
    Name(String),
    /// Any other type (Decimal, Byte Sequence, Boolean, Date, Display String).
    Other,
}

/// An Item: a bare item and its Parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) bare: Bare,
    params: Vec<(String, Bare)>,
}

impl Item {
    /// The value of parameter `key`; a repeated key has its last value.
    pub(super) fn param(&self, key: &str) -> Option<&Bare> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A member of a List or a Dictionary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Member {
    Item(Item),
    /// An Inner List: valid syntax, but no rate-limit field uses one.
    InnerList,
}

/// Parses a whole field value as a List; `None` if it is not one.
pub(super) fn parse_list(input: &[u8]) -> Option<Vec<Member>> {
    let mut p = Parser::new(input);
    let mut members = Vec::new();
    while !p.at_end() {
        members.push(p.item_or_inner_list()?);
        p.skip_ows();
        if p.at_end() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.at_end() {
            // A trailing comma.
            return None;
        }
    }
    Some(members)
}

/// Parses a whole field value as a Dictionary; `None` if it is not one.
///
/// A repeated key keeps its first position and its last value, as RFC 9651
/// says of ordered maps.
pub(super) fn parse_dictionary(input: &[u8]) -> Option<Vec<(String, Member)>> {
    let mut p = Parser::new(input);
    let mut members: Vec<(String, Member)> = Vec::new();
    while !p.at_end() {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            p.item_or_inner_list()?
        } else {
            // A bare key is Boolean true with parameters.
            let params = p.params()?;
            Member::Item(Item {
                bare: Bare::Other,
                params,
            })
        };
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = member,
            None => members.push((key, member)),
        }
        p.skip_ows();
        if p.at_end() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.skip_ows();
        if p.at_end() {
            return None;
        }
    }
    Some(members)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8]) -> Self {
        let start = input
            .iter()
            .position(|b| !is_ows(*b))
            .unwrap_or(input.len());
        let end = input
            .iter()
            .rposition(|b| !is_ows(*b))
            .map_or(start, |i| i + 1);
        Parser {
            input: input.get(start..end).unwrap_or_default(),
            pos: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> bool {
        if self.peek() == Some(want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b) if is_ows(b)) {
            self.pos += 1;
        }
    }

    /// RFC 9651 §4.2.1.1.
    fn item_or_inner_list(&mut self) -> Option<Member> {
        if self.peek() == Some(b'(') {
            self.inner_list()
        } else {
            self.item().map(Member::Item)
        }
    }

    /// RFC 9651 §4.2.1.2.
    fn inner_list(&mut self) -> Option<Member> {
        if !self.eat(b'(') {
            return None;
        }
        loop {
            self.skip_sp();
            if self.eat(b')') {
                self.params()?;
                return Some(Member::InnerList);
            }
            self.item()?;
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return None,
            }
        }
    }

    /// RFC 9651 §4.2.3.
    fn item(&mut self) -> Option<Item> {
        let bare = self.bare_item()?;
        let params = self.params()?;
        Some(Item { bare, params })
    }

    /// RFC 9651 §4.2.3.1.
    fn bare_item(&mut self) -> Option<Bare> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(Bare::Name),
            b'*' | b'A'..=b'Z' | b'a'..=b'z' => self.token().map(Bare::Name),
            b':' => self.byte_sequence(),
            b'?' => self.boolean(),
            b'@' => self.date(),
            b'%' => self.display_string(),
            _ => None,
        }
    }

    /// RFC 9651 §4.2.3.2.
    fn params(&mut self) -> Option<Vec<(String, Bare)>> {
        let mut params: Vec<(String, Bare)> = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                Bare::Other
            };
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => params.push((key, value)),
            }
        }
        Some(params)
    }

    /// RFC 9651 §4.2.3.3.
    fn key(&mut self) -> Option<String> {
        match self.peek()? {
            b'a'..=b'z' | b'*' => {}
            _ => return None,
        }
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.pos += 1;
        }
        ascii(self.input.get(start..self.pos)?)
    }

    /// RFC 9651 §4.2.4: an Integer, or a Decimal (checked, value dropped).
    fn number(&mut self) -> Option<Bare> {
        let negative = self.eat(b'-');
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return None;
        }
        let mut value: i64 = 0;
        let mut chars = 0usize;
        let mut dot_at: Option<usize> = None;
        while let Some(b) = self.peek() {
            match b {
                b'0'..=b'9' => {
                    self.pos += 1;
                    chars += 1;
                    if dot_at.is_none() {
                        // At most 15 digits (checked below), so no overflow.
                        value = value * 10 + i64::from(b - b'0');
                    }
                }
                b'.' if dot_at.is_none() => {
                    if chars > 12 {
                        return None;
                    }
                    self.pos += 1;
                    dot_at = Some(chars);
                    chars += 1;
                }
                _ => break,
            }
            if dot_at.is_none() && chars > 15 {
                return None;
            }
            if dot_at.is_some() && chars > 16 {
                return None;
            }
        }
        match dot_at {
            None => Some(Bare::Integer(if negative { -value } else { value })),
            Some(dot) => {
                let fraction_digits = chars - dot - 1;
                if fraction_digits == 0 || fraction_digits > 3 {
                    return None;
                }
                Some(Bare::Other)
            }
        }
    }

    /// RFC 9651 §4.2.5.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            match self.bump()? {
                b'\\' => match self.bump()? {
                    c @ (b'"' | b'\\') => out.push(char::from(c)),
                    _ => return None,
                },
                b'"' => return Some(out),
                c @ 0x20..=0x7e => out.push(char::from(c)),
                _ => return None,
            }
        }
    }

    /// RFC 9651 §4.2.6.
    fn token(&mut self) -> Option<String> {
        match self.peek()? {
            b'*' | b'A'..=b'Z' | b'a'..=b'z' => {}
            _ => return None,
        }
        let start = self.pos;
        while matches!(self.peek(), Some(b) if is_tchar(b) || b == b':' || b == b'/') {
            self.pos += 1;
        }
        ascii(self.input.get(start..self.pos)?)
    }

    /// RFC 9651 §4.2.7 (the alphabet is checked; the content is not kept).
    fn byte_sequence(&mut self) -> Option<Bare> {
        if !self.eat(b':') {
            return None;
        }
        loop {
            match self.bump()? {
                b':' => return Some(Bare::Other),
                b if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') => {}
                _ => return None,
            }
        }
    }

    /// RFC 9651 §4.2.8.
    fn boolean(&mut self) -> Option<Bare> {
        if !self.eat(b'?') {
            return None;
        }
        match self.bump()? {
            b'0' | b'1' => Some(Bare::Other),
            _ => None,
        }
    }

    /// RFC 9651 §4.2.9: `@` and an Integer.
    fn date(&mut self) -> Option<Bare> {
        if !self.eat(b'@') {
            return None;
        }
        match self.number()? {
            Bare::Integer(_) => Some(Bare::Other),
            _ => None,
        }
    }

    /// RFC 9651 §4.2.10: `%"`, printable ASCII and `%xx` (lowercase hex)
    /// escapes that together decode to UTF-8.
    fn display_string(&mut self) -> Option<Bare> {
        if !self.eat(b'%') || !self.eat(b'"') {
            return None;
        }
        let mut bytes = Vec::new();
        loop {
            match self.bump()? {
                b'%' => {
                    let hi = lower_hex(self.bump()?)?;
                    let lo = lower_hex(self.bump()?)?;
                    bytes.push(hi * 16 + lo);
                }
                b'"' => {
                    return std::str::from_utf8(&bytes).ok().map(|_| Bare::Other);
                }
                c @ 0x20..=0x7e => bytes.push(c),
                _ => return None,
            }
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn lower_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn ascii(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(member: &Member) -> &Item {
        match member {
            Member::Item(item) => item,
            Member::InnerList => panic!("expected an item, got an inner list"),
        }
    }

    fn name(s: &str) -> Bare {
        Bare::Name(s.to_owned())
    }

    #[test]
    fn lists_that_parse() {
        let list = parse_list(br#""burst";q=100;w=60,"daily";q=1000;w=86400"#).expect("a list");
        assert_eq!(list.len(), 2);
        assert_eq!(item(&list[0]).bare, name("burst"));
        assert_eq!(item(&list[0]).param("q"), Some(&Bare::Integer(100)));
        assert_eq!(item(&list[0]).param("w"), Some(&Bare::Integer(60)));
        assert_eq!(item(&list[1]).bare, name("daily"));
        assert_eq!(item(&list[1]).param("q"), Some(&Bare::Integer(1000)));

        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"   ", 0),
            (b"1", 1),
            (b"  1 ,\t2  ", 2),
            (b"-999999999999999", 1),
            (b"999999999999999", 1),
            (b"1.5, 123456789012.123, -0.1", 3),
            (b"tok, *tok, a:b/c!#$%&'*+-.^_`|~", 3),
            (br#""a \" b \\ c""#, 1),
            (b":cHsdsRa894==:, ::", 2),
            (b"?0, ?1", 2),
            (b"@1659578233, @-1", 2),
            (br#"%"caf%c3%a9", %"""#, 2),
            (br#"(1 2 "x");a=1, ()"#, 2),
            (b"x;a;b=?0;c=:AA==:;d=@1;*e=tok", 1),
            (b"\"peruser\";r=300000000;t=60;pk=:QXBwLTk5OQ==:", 1),
        ];
        for (input, len) in cases {
            let got = parse_list(input);
            assert_eq!(
                got.as_ref().map(Vec::len),
                Some(*len),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn lists_that_fail() {
        let cases: &[&[u8]] = &[
            b"1,",
            b",1",
            b"1,,2",
            b"1 2",
            b"1000000000000000",
            b"-1000000000000000",
            b"1234567890123.1",
            b"1.1234",
            b"1.",
            b"-",
            b"--1",
            b"+1",
            b"\"unterminated",
            b"\"bad \\n escape\"",
            b"\"tab\tinside\"",
            b"\"\xc3\xa9\"",
            b"\xff",
            b"tok\xff",
            b":not base64!:",
            b":unterminated",
            b"?2",
            b"?",
            b"@1.5",
            b"%\"caf%C3%A9\"",
            b"%\"bad utf8 %ff\"",
            b"%nope",
            b"(1 2",
            b"(1,2)",
            b"x;A=1",
            b"x;=1",
            b"x;a=",
            b"limit=100",
            b"{}",
            b"1;",
        ];
        for input in cases {
            assert_eq!(
                parse_list(input),
                None,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn parameters_repeat_last_wins() {
        let list = parse_list(b"\"p\";r=1;r=2").expect("a list");
        assert_eq!(item(&list[0]).param("r"), Some(&Bare::Integer(2)));
        assert_eq!(item(&list[0]).param("t"), None);
    }

    #[test]
    fn dictionaries() {
        let dict = parse_dictionary(b"limit=100, remaining=50, reset=30").expect("a dictionary");
        let keys: Vec<&str> = dict.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["limit", "remaining", "reset"]);
        assert_eq!(item(&dict[1].1).bare, Bare::Integer(50));

        let dict = parse_dictionary(b"a=1, b, a=3;x").expect("a dictionary");
        assert_eq!(dict.len(), 2);
        assert_eq!(dict[0].0, "a");
        assert_eq!(item(&dict[0].1).bare, Bare::Integer(3));
        assert_eq!(item(&dict[1].1).bare, Bare::Other);

        for input in [
            &b"\"burst\";r=50"[..],
            b"Limit=1",
            b"a=1,",
            b"a=1 b=2",
            b"a==1",
        ] {
            assert_eq!(
                parse_dictionary(input),
                None,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
