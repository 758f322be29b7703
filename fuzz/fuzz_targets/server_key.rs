//! kneo-server's `Idempotency-Key` parsing: never a panic; an accepted key
//! is 1 to 255 printable ASCII characters (spaces come only from a quoted
//! string); a bare token of visible ASCII is accepted as is; an accepted key,
//! quoted as a structured-field string, parses back to itself; two header
//! lines are refused.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderValue};
use kneo_core::IDEMPOTENCY_KEY;
use kneo_server::idempotency::__fuzz::parse_key;
use kneo_server::idempotency::MAX_KEY_LEN;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    values: Vec<Vec<u8>>,
}

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

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for value in input.values.iter().take(3) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(IDEMPOTENCY_KEY, value);
        }
    }
    let lines = headers.get_all(IDEMPOTENCY_KEY).iter().count();
    let got = parse_key(&headers);
    match lines {
        0 => assert_eq!(got, Ok(None)),
        1 => {}
        _ => assert!(got.is_err(), "{lines} lines accepted: {got:?}"),
    }
    if let Ok(Some(key)) = &got {
        assert!((1..=MAX_KEY_LEN).contains(&key.len()), "{key:?}");
        assert!(key.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{key:?}");
        // Quoted, it is the same key.
        let mut quoted = HeaderMap::new();
        let value = HeaderValue::from_str(&quote(key)).expect("printable ASCII quotes");
        quoted.insert(IDEMPOTENCY_KEY, value);
        assert_eq!(parse_key(&quoted).as_ref(), Ok(&Some(key.clone())));
    }
    if lines == 1 {
        let raw = headers[IDEMPOTENCY_KEY].as_bytes();
        let bare = raw
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .map(|start| {
                let end = raw.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
                &raw[start..=end.unwrap_or(start)]
            })
            .unwrap_or_default();
        if bare.first() != Some(&b'"')
            && (1..=MAX_KEY_LEN).contains(&bare.len())
            && bare.iter().all(u8::is_ascii_graphic)
        {
            let want = std::str::from_utf8(bare).expect("ASCII");
            assert_eq!(got.as_ref().ok().and_then(|k| k.as_deref()), Some(want));
        }
    }
});
