//! Properties of kneo-server's two parsers, on stable and in the normal test
//! suite: the invariants the cargo-fuzz targets `server_key` and `record` (in
//! `fuzz/fuzz_targets/`) assert, over generated inputs that are mostly
//! near-valid (keys at the length limit, quoted strings with escapes,
//! encodings with one byte changed) and partly arbitrary bytes.
//!
//! Each module below says what it proves.

use proptest::prelude::*;

mod key {
    //! The `Idempotency-Key` header (`fuzz/fuzz_targets/server_key.rs`):
    //! no header is no key, two header lines are refused; an accepted key is
    //! 1 to 255 printable ASCII characters (spaces only inside a quoted
    //! string), and quoted as a structured-field string it parses back to
    //! itself; every visible-ASCII key is accepted as is, bare or quoted,
    //! with optional whitespace around, and quoted with RFC 8941 parameters
    //! after it (ignored); a longer key, one with a byte outside printable
    //! ASCII (or a space, bare), a bad escape or anything but parameters
    //! after the closing quote is refused. A [`RecordKey`] shows as the scope's hex
    //! digest, `:`, and the key.

    use super::*;

    use http::{HeaderMap, HeaderValue};
    use kneo_core::IDEMPOTENCY_KEY;
    use kneo_server::idempotency::__fuzz::parse_key;
    use kneo_server::idempotency::{RecordKey, Scope, MAX_KEY_LEN};
    use proptest::sample::{select, Index};

    /// `key` as a structured-field string: `"`, with `"` and `\` escaped.
    fn quote(key: &str) -> String {
        let mut out = String::from("\"");
        for c in key.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    /// What the layer accepts for one header line: `Ok(Some(key))`.
    fn accepted(value: &[u8]) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_bytes(value).ok()?);
        parse_key(&headers).ok().flatten().map(|k| k.to_string())
    }

    fn ows() -> impl Strategy<Value = String> {
        "[ \t]{0,2}"
    }

    /// A key the layer must accept: 1 to 255 visible ASCII characters,
    /// often at the limit, often with the characters quoting escapes.
    fn valid_key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[!-~]{1,16}",
            "[!-~]{250,255}",
            "[\"\\\\a-z]{1,12}",
            "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        ]
    }

    /// One header line: bare and quoted keys (valid, too long, with a
    /// space or a control inside, badly escaped, unterminated, followed by
    /// a parameter), with whitespace around, and arbitrary bytes.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        let content = prop_oneof![valid_key(), "[ -~]{0,12}", "[!-~]{254,258}", "\\PC{0,8}"];
        let broken = select(&["", "\"", ";p=1", "\\", "\\n", "\u{1}", " x"][..]);
        prop_oneof![
            (ows(), content.clone(), ows()).prop_map(|(a, k, b)| format!("{a}{k}{b}").into_bytes()),
            (ows(), content, broken, any::<Index>(), ows()).prop_map(|(a, k, junk, at, b)| {
                let mut quoted = quote(&k);
                // Somewhere after the opening quote.
                let i = 1 + at.index(quoted.len());
                let i = (i..=quoted.len())
                    .find(|i| quoted.is_char_boundary(*i))
                    .unwrap_or(quoted.len());
                quoted.insert_str(i, junk);
                format!("{a}{quoted}{b}").into_bytes()
            }),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
    }

    proptest! {
        #[test]
        fn an_accepted_key_is_bounded_visible_ascii_and_quotes_back(
            lines in proptest::collection::vec(line(), 0..4),
        ) {
            let mut headers = HeaderMap::new();
            for line in &lines {
                if let Ok(value) = HeaderValue::from_bytes(line) {
                    headers.append(IDEMPOTENCY_KEY, value);
                }
            }
            let count = headers.get_all(IDEMPOTENCY_KEY).iter().count();
            let got = parse_key(&headers);
            match count {
                0 => prop_assert_eq!(&got, &Ok(None)),
                1 => {}
                _ => prop_assert!(got.is_err(), "{} lines accepted: {:?}", count, got),
            }
            if let Ok(Some(key)) = &got {
                prop_assert!((1..=MAX_KEY_LEN).contains(&key.len()), "{:?}", key);
                prop_assert!(key.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{:?}", key);
                let again = accepted(quote(key).as_bytes());
                prop_assert_eq!(again.as_deref(), Some(&**key));
            }
            if count == 1 {
                // A bare token of 1 to 255 visible characters is the key as is.
                let raw = headers[IDEMPOTENCY_KEY].as_bytes();
                let bare = std::str::from_utf8(raw)
                    .map(|t| t.trim_matches([' ', '\t']))
                    .unwrap_or_default();
                if !bare.starts_with('"')
                    && (1..=MAX_KEY_LEN).contains(&bare.len())
                    && bare.bytes().all(|b| b.is_ascii_graphic())
                {
                    let key = got.ok().flatten();
                    prop_assert_eq!(key.as_deref(), Some(bare));
                }
            }
        }

        #[test]
        fn every_valid_key_is_accepted_bare_and_quoted(
            key in valid_key(),
            before in ows(),
            after in ows(),
        ) {
            let quoted = format!("{before}{}{after}", quote(&key));
            prop_assert_eq!(accepted(quoted.as_bytes()), Some(key.clone()), "{:?}", quoted);
            if !key.starts_with('"') {
                let bare = format!("{before}{key}{after}");
                prop_assert_eq!(accepted(bare.as_bytes()), Some(key), "{:?}", bare);
            }
        }

        #[test]
        fn keys_outside_the_rules_are_refused(
            long in "[!-~]{256,300}",
            key in valid_key(),
            at in any::<Index>(),
            bad in prop_oneof![select(&[b' ', b'\t', b'\x01', 0x7f][..]), 0x80u8..=0xff],
            // Anything but the `;` that starts a parameter.
            after in "[!-:<-~][ -~]{0,4}",
        ) {
            prop_assert_eq!(accepted(long.as_bytes()), None, "too long, bare");
            prop_assert_eq!(accepted(quote(&long).as_bytes()), None, "too long, quoted");

            // One byte outside visible ASCII inside the key (not at an end,
            // where spaces and tabs are whitespace). A key that starts with
            // `"` is not written bare: it would be read as a quoted string,
            // which may hold a space (`" "`, found by this property).
            if key.len() >= 2 && !key.starts_with('"') {
                let mut spoiled = key.clone().into_bytes();
                spoiled.insert(1 + at.index(key.len() - 1), bad);
                prop_assert_eq!(accepted(&spoiled), None, "{:?}", spoiled);
            }
            // A quoted string may hold spaces, nothing else outside printable ASCII.
            if bad != b' ' {
                let mut quoted = quote(&key).into_bytes();
                quoted.insert(1 + at.index(quoted.len() - 1), bad);
                prop_assert_eq!(accepted(&quoted), None, "{:?}", quoted);
            }

            // Only parameters may follow a quoted string.
            let trailing = format!("{}{after}", quote(&key));
            prop_assert_eq!(accepted(trailing.as_bytes()), None, "{:?}", trailing);
            // `\` escapes only `"` and `\`.
            let mut escaped = quote(&key);
            escaped.insert_str(escaped.len() - 1, "\\a");
            prop_assert_eq!(accepted(escaped.as_bytes()), None, "{:?}", escaped);
        }

        #[test]
        fn parameters_after_a_quoted_key_are_ignored(
            key in valid_key(),
            params in proptest::collection::vec(
                "[a-z*][a-z0-9_.*-]{0,5}(=([0-9]{1,3}|\"[a-z ;]{0,4}\"|\\?[01]|[a-z]{1,4}))?",
                1..3,
            ),
        ) {
            let value = format!("{};{}", quote(&key), params.join(";"));
            prop_assert_eq!(accepted(value.as_bytes()), Some(key), "{:?}", value);
        }

        #[test]
        fn a_record_key_is_the_scope_digest_and_the_key(
            caller in proptest::collection::vec(any::<u8>(), 0..32),
            other in proptest::collection::vec(any::<u8>(), 0..32),
            key in valid_key(),
        ) {
            let scope = Scope::of(&caller);
            let record_key = RecordKey::new(scope, &key);
            prop_assert_eq!(record_key.key(), key.as_str());
            prop_assert_eq!(record_key.scope(), &scope);
            let shown = record_key.to_string();
            let (digest, rest) = shown.split_at(64);
            let hex: String = scope.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(digest, hex.as_str());
            prop_assert_eq!(rest, format!(":{key}"));
            // Another caller's key is another record.
            let theirs = RecordKey::new(Scope::of(&other), &key);
            prop_assert_eq!(theirs == record_key, other == caller);
        }
    }
}

mod record {
    //! Stored records (`fuzz/fuzz_targets/record.rs`): records built from
    //! arbitrary valid parts encode to the documented version-1 layout and
    //! decode to themselves; whatever bytes decode re-encode to the same
    //! bytes and decode again to the same record; every proper prefix of an
    //! encoding, an encoding with bytes after it, and one with a varint not
    //! in its shortest form are refused.

    use super::*;

    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, StatusCode};
    use kneo_server::idempotency::{
        Claim, Completed, Completion, FencingToken, Fingerprint, Record, StoredResponse,
    };
    use proptest::sample::{select, Index};

    fn fingerprint() -> impl Strategy<Value = Fingerprint> {
        any::<[u8; 32]>().prop_map(Fingerprint::from_bytes)
    }

    fn status() -> impl Strategy<Value = StatusCode> {
        (100u16..=999).prop_map(|s| StatusCode::from_u16(s).expect("invariant: 100 to 999"))
    }

    /// Any header name in its canonical (lowercase) form.
    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            select(
                &[
                    "content-type",
                    "set-cookie",
                    "location",
                    "etag",
                    "x-request-id"
                ][..]
            )
            .prop_map(HeaderName::from_static),
            "[a-z0-9!#$%&'*+.^_`|~-]{1,24}".prop_map(|n| {
                HeaderName::from_bytes(n.as_bytes()).expect("invariant: lowercase token characters")
            }),
        ]
    }

    /// `len` bytes repeating a generated run: long values without a
    /// strategy per byte, which is slow in a debug build.
    fn long<T: Strategy<Value = u8>>(
        byte: T,
        len: std::ops::Range<usize>,
    ) -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(byte, 1..8), len)
            .prop_map(|(run, len)| run.iter().copied().cycle().take(len).collect())
    }

    /// Any header value: visible ASCII, spaces, tabs and obs-text, short or
    /// long enough for a two-byte length.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        let byte = prop_oneof![0x20u8..=0x7e, 0x80u8..=0xff, Just(b'\t')];
        prop_oneof![
            4 => proptest::collection::vec(byte.clone(), 0..24),
            1 => long(byte, 126..200),
        ]
        .prop_map(|v| HeaderValue::from_bytes(&v).expect("invariant: only allowed bytes"))
    }

    /// Any body: short, or long enough for a two- or three-byte length.
    fn body() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            6 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => long(any::<u8>(), 120..140),
            1 => long(any::<u8>(), 16_380..16_390),
        ]
        .prop_map(Bytes::from)
    }

    fn stored() -> impl Strategy<Value = StoredResponse> {
        let headers = prop_oneof![
            12 => proptest::collection::vec((header_name(), header_value()), 0..6),
            // A count of two bytes.
            1 => proptest::collection::vec((header_name(), header_value()), 127..131),
        ];
        (status(), headers, body()).prop_map(|(s, h, b)| StoredResponse::new(s, h, b))
    }

    /// Any record there is, from valid parts.
    fn record() -> impl Strategy<Value = Record> {
        let token = prop_oneof![any::<u64>(), select(&[0, 1, u64::MAX][..])];
        prop_oneof![
            (token, fingerprint())
                .prop_map(|(t, f)| Record::InFlight(Claim::new(FencingToken::new(t), f))),
            (fingerprint(), stored()).prop_map(|(f, res)| {
                Record::Completed(Completed::new(f, Completion::Stored(res)))
            }),
            (fingerprint(), status()).prop_map(|(f, s)| {
                Record::Completed(Completed::new(f, Completion::NotStored(s)))
            }),
        ]
    }

    /// How a varint is written: as it should be, or not in shortest form.
    #[derive(Debug, Clone, Copy)]
    enum Long {
        /// Shortest form.
        No,
        /// With this many redundant zero groups after the last.
        Zeros(usize),
        /// Ten bytes whose last carries `0x02..=0x7f`: more than 64 bits.
        Overflow(u8),
    }

    fn long_varint() -> impl Strategy<Value = Long> {
        prop_oneof![
            (1usize..3).prop_map(Long::Zeros),
            (2u8..=0x7f).prop_map(Long::Overflow)
        ]
    }

    /// LEB128 of `n` (below 2^63), written the `long` way.
    fn varint(out: &mut Vec<u8>, mut n: u64, long: Long) {
        let mut groups = Vec::new();
        loop {
            groups.push((n & 0x7f) as u8);
            n >>= 7;
            if n == 0 {
                break;
            }
        }
        match long {
            Long::No => {}
            Long::Zeros(padding) => groups.extend(std::iter::repeat_n(0, padding)),
            Long::Overflow(last) => {
                groups.resize(9, 0);
                groups.push(last);
            }
        }
        let last = groups.len() - 1;
        for (i, g) in groups.into_iter().enumerate() {
            out.push(if i == last { g } else { g | 0x80 });
        }
    }

    /// The layout the `Record` docs give, written from them: version 1,
    /// the tag, and the fields, with the varint at position `at` (0: the
    /// header count, then each length in order) written the `long` way.
    fn layout(record: &Record, at: usize, long: Long) -> Vec<u8> {
        let mut out = vec![1];
        let mut n = 0;
        let mut var = |out: &mut Vec<u8>, value: usize| {
            varint(out, value as u64, if n == at { long } else { Long::No });
            n += 1;
        };
        match record {
            Record::InFlight(claim) => {
                out.push(1);
                out.extend_from_slice(&claim.token().get().to_be_bytes());
                out.extend_from_slice(claim.fingerprint().as_bytes());
            }
            Record::Completed(done) => match done.outcome() {
                Completion::Stored(res) => {
                    out.push(2);
                    out.extend_from_slice(done.fingerprint().as_bytes());
                    out.extend_from_slice(&res.status().as_u16().to_be_bytes());
                    var(&mut out, res.headers().len());
                    for (name, value) in res.headers() {
                        var(&mut out, name.as_str().len());
                        out.extend_from_slice(name.as_str().as_bytes());
                        var(&mut out, value.len());
                        out.extend_from_slice(value.as_bytes());
                    }
                    var(&mut out, res.body().len());
                    out.extend_from_slice(res.body());
                }
                Completion::NotStored(status) => {
                    out.push(3);
                    out.extend_from_slice(done.fingerprint().as_bytes());
                    out.extend_from_slice(&status.as_u16().to_be_bytes());
                }
                _ => unreachable!("a test of version 1 knows its two outcomes"),
            },
            _ => unreachable!("a test of version 1 knows its two records"),
        }
        out
    }

    /// What a store might hand back: an encoding with one change (a byte
    /// flipped, replaced, added or removed, a letter upper-cased), or bytes
    /// with a valid version and tag in front.
    fn near_valid() -> impl Strategy<Value = Vec<u8>> {
        (
            record(),
            0usize..6,
            any::<Index>(),
            any::<u8>(),
            0u8..=3,
            any::<Vec<u8>>(),
        )
            .prop_map(|(record, change, at, byte, tag, tail)| {
                let mut bytes = record.encode();
                let i = at.index(bytes.len());
                match change {
                    0 => bytes[i] ^= byte | 1,
                    1 => bytes[i] = byte,
                    2 => bytes.insert(i, byte),
                    3 => {
                        bytes.remove(i);
                    }
                    4 => {
                        // A header name in upper case is not canonical.
                        if let Some(b) = bytes[i..].iter_mut().find(|b| b.is_ascii_lowercase()) {
                            b.make_ascii_uppercase();
                        }
                    }
                    _ => {
                        bytes = vec![1, tag];
                        bytes.extend(tail);
                    }
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn records_encode_to_the_documented_layout_and_decode_to_themselves(record in record()) {
            let bytes = record.encode();
            prop_assert_eq!(&bytes, &layout(&record, 0, Long::No));
            let back = Record::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &record);
            prop_assert_eq!(back.encode(), bytes.clone());
            // The per-variant encoders say the same.
            match &record {
                Record::InFlight(claim) => prop_assert_eq!(claim.encode(), bytes),
                Record::Completed(done) => prop_assert_eq!(done.encode(), bytes),
                _ => unreachable!("a test of version 1 knows its two records"),
            }
        }

        #[test]
        fn what_decodes_re_encodes_to_the_same_bytes(bytes in near_valid()) {
            if let Ok(record) = Record::decode(&bytes) {
                prop_assert_eq!(record.encode(), bytes.clone(), "{:?}", record);
                prop_assert_eq!(Record::decode(&bytes), Ok(record));
            }
        }

        #[test]
        fn prefixes_extensions_and_long_varints_are_refused(
            record in record(),
            cut in any::<Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..8),
            at in any::<Index>(),
            long in long_varint(),
        ) {
            let bytes = record.encode();
            let prefix = &bytes[..cut.index(bytes.len())];
            prop_assert!(Record::decode(prefix).is_err(), "prefix of {} bytes", prefix.len());
            let mut longer = bytes.clone();
            longer.extend(extra);
            prop_assert!(Record::decode(&longer).is_err(), "trailing bytes accepted");
            if let Record::Completed(done) = &record {
                if let Completion::Stored(res) = done.outcome() {
                    let varints = 2 + 2 * res.headers().len();
                    let bytes = layout(&record, at.index(varints), long);
                    prop_assert!(Record::decode(&bytes).is_err(), "{:?} varint accepted", long);
                }
            }
        }
    }
}
