//! What a store keeps per key: an in-flight [`Claim`] or a [`Completed`]
//! record, and their compact, versioned byte encoding.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use super::fingerprint::Fingerprint;

/// The store's proof that a claim is still the current one.
///
/// A store hands out a new token with every successful claim; completing or
/// releasing with an older token is refused, so a handler that outlived its
/// lease cannot overwrite the work of the request that claimed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with this value (for store implementations).
    pub fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The token's value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// An in-flight claim on a key: who holds it ([`token`](Claim::token)) and
/// for which request ([`fingerprint`](Claim::fingerprint)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    token: FencingToken,
    fingerprint: Fingerprint,
}

impl Claim {
    /// A claim with `token` for the request with `fingerprint`.
    pub fn new(token: FencingToken, fingerprint: Fingerprint) -> Self {
        Claim { token, fingerprint }
    }

    /// The fencing token of this claim.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// The fingerprint of the request that holds the claim.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// `Record::InFlight(self).encode()`, without the copy.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 8 + 32);
        out.extend_from_slice(&[VERSION, TAG_IN_FLIGHT]);
        out.extend_from_slice(&self.token.0.to_be_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out
    }
}

/// A handler's response as stored: status, headers in the order the handler
/// set them, and the whole body. Cloning it is cheap (two reference counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: Arc<[(HeaderName, HeaderValue)]>,
    body: Bytes,
}

impl StoredResponse {
    /// A stored response.
    pub fn new(status: StatusCode, headers: Vec<(HeaderName, HeaderValue)>, body: Bytes) -> Self {
        StoredResponse {
            status,
            headers: headers.into(),
            body,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers, in order (a name may repeat).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Status, headers and body, by value.
    pub fn into_parts(self) -> (StatusCode, Arc<[(HeaderName, HeaderValue)]>, Bytes) {
        (self.status, self.headers, self.body)
    }
}

/// How a completed request ended, as far as a replay cares.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion {
    /// The response was stored and is replayed.
    Stored(StoredResponse),
    /// The response (with this status) was larger than `max_response`: the
    /// request ran, but there is nothing to replay.
    NotStored(StatusCode),
}

/// A finished request: its fingerprint and its [`Completion`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    fingerprint: Fingerprint,
    outcome: Completion,
}

impl Completed {
    /// A completed record.
    pub fn new(fingerprint: Fingerprint, outcome: Completion) -> Self {
        Completed {
            fingerprint,
            outcome,
        }
    }

    /// The fingerprint of the request that produced it.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The outcome.
    pub fn outcome(&self) -> &Completion {
        &self.outcome
    }

    /// The outcome, by value.
    pub fn into_outcome(self) -> Completion {
        self.outcome
    }

    /// `Record::Completed(self).encode()`, without the copy.
    pub fn encode(&self) -> Vec<u8> {
        match &self.outcome {
            Completion::Stored(res) => {
                let headers: usize = res
                    .headers
                    .iter()
                    .map(|(n, v)| n.as_str().len() + v.len() + 4)
                    .sum();
                let mut out = Vec::with_capacity(2 + 32 + 2 + 10 + headers + res.body.len());
                out.extend_from_slice(&[VERSION, TAG_STORED]);
                out.extend_from_slice(self.fingerprint.as_bytes());
                out.extend_from_slice(&res.status.as_u16().to_be_bytes());
                put_varint(&mut out, res.headers.len() as u64);
                for (name, value) in res.headers.iter() {
                    put_bytes(&mut out, name.as_str().as_bytes());
                    put_bytes(&mut out, value.as_bytes());
                }
                put_bytes(&mut out, &res.body);
                out
            }
            Completion::NotStored(status) => {
                let mut out = Vec::with_capacity(2 + 32 + 2);
                out.extend_from_slice(&[VERSION, TAG_NOT_STORED]);
                out.extend_from_slice(self.fingerprint.as_bytes());
                out.extend_from_slice(&status.as_u16().to_be_bytes());
                out
            }
        }
    }
}

/// The value a store keeps under one key.
///
/// [`encode`](Record::encode) and [`decode`](Record::decode) are exact
/// inverses: `decode(encode(r)) == r` for every record, and
/// `encode(decode(b)) == b` for every `b` that decodes. Anything else is a
/// [`DecodeError`], never a panic.
///
/// ```
/// use bytes::Bytes;
/// use http::{HeaderName, HeaderValue, Method, StatusCode};
/// use kneo_server::idempotency::{Completed, Fingerprint, Completion, Record, StoredResponse};
///
/// let fp = Fingerprint::of(&Method::POST, "/payments", b"{}");
/// let res = StoredResponse::new(
///     StatusCode::CREATED,
///     vec![(HeaderName::from_static("content-type"), HeaderValue::from_static("application/json"))],
///     Bytes::from_static(b"{\"id\":1}"),
/// );
/// let record = Record::Completed(Completed::new(fp, Completion::Stored(res)));
/// let bytes = record.encode();
/// assert_eq!(Record::decode(&bytes).unwrap(), record);
/// assert!(Record::decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
///
/// # Encoding, version 1
///
/// ```text
/// record    = version(0x01) tag body
/// in-flight = 0x01 token(u64 BE) fingerprint(32)
/// stored    = 0x02 fingerprint(32) status(u16 BE) count(varint) *(len(varint) name len(varint) value) len(varint) body
/// not-stored= 0x03 fingerprint(32) status(u16 BE)
/// ```
///
/// `varint` is unsigned LEB128 in its shortest form; header names are
/// lowercase; nothing may follow the last field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A request holds the key and is running.
    InFlight(Claim),
    /// A request finished.
    Completed(Completed),
}

const VERSION: u8 = 1;
const TAG_IN_FLIGHT: u8 = 1;
const TAG_STORED: u8 = 2;
const TAG_NOT_STORED: u8 = 3;

/// Bytes that are not a [`Record`] in a known encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed idempotency record: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

impl Record {
    /// The record's bytes, as stores that keep bytes (Redis) keep it.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::InFlight(claim) => claim.encode(),
            Record::Completed(done) => done.encode(),
        }
    }

    /// Parses bytes made by [`encode`](Record::encode).
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let mut r = Reader(bytes);
        if r.byte()? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let record = match r.byte()? {
            TAG_IN_FLIGHT => {
                let token = u64::from_be_bytes(r.array()?);
                let fingerprint = Fingerprint::from_bytes(r.array()?);
                Record::InFlight(Claim::new(FencingToken(token), fingerprint))
            }
            TAG_STORED => {
                let fingerprint = Fingerprint::from_bytes(r.array()?);
                let status = r.status()?;
                let count = r.varint()?;
                let mut headers = Vec::new();
                for _ in 0..count {
                    let raw = r.bytes()?;
                    let name = HeaderName::from_bytes(raw)
                        .ok()
                        .filter(|n| n.as_str().as_bytes() == raw)
                        .ok_or(DecodeError("invalid header name"))?;
                    let value = HeaderValue::from_bytes(r.bytes()?)
                        .map_err(|_| DecodeError("invalid header value"))?;
                    headers.push((name, value));
                }
                let body = Bytes::copy_from_slice(r.bytes()?);
                let res = StoredResponse::new(status, headers, body);
                Record::Completed(Completed::new(fingerprint, Completion::Stored(res)))
            }
            TAG_NOT_STORED => {
                let fingerprint = Fingerprint::from_bytes(r.array()?);
                let status = r.status()?;
                Record::Completed(Completed::new(fingerprint, Completion::NotStored(status)))
            }
            _ => return Err(DecodeError("unknown record tag")),
        };
        if !r.0.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(record)
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn status(&mut self) -> Result<StatusCode, DecodeError> {
        StatusCode::from_u16(u16::from_be_bytes(self.array()?))
            .map_err(|_| DecodeError("invalid status"))
    }

    /// Shortest-form LEB128 only, so that re-encoding gives the same bytes.
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            let shift = 7 * i;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(DecodeError("varint overflows"));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError("varint not in shortest form"));
                }
                return Ok(n);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError("length too large"))?;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn fp() -> Fingerprint {
        Fingerprint::of(&Method::POST, "/p?x=1", b"body")
    }

    fn samples() -> Vec<Record> {
        let headers = vec![
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("a=1"),
            ),
            (
                HeaderName::from_static("x-b"),
                HeaderValue::from_bytes(b"\xff obs-text").expect("obs-text is allowed"),
            ),
            (
                HeaderName::from_static("set-cookie"),
                HeaderValue::from_static("b=2"),
            ),
        ];
        vec![
            Record::InFlight(Claim::new(FencingToken(u64::MAX), fp())),
            Record::InFlight(Claim::new(FencingToken(0), fp())),
            Record::Completed(Completed::new(
                fp(),
                Completion::Stored(StoredResponse::new(
                    StatusCode::CREATED,
                    headers,
                    Bytes::from(vec![7u8; 300]),
                )),
            )),
            Record::Completed(Completed::new(
                fp(),
                Completion::Stored(StoredResponse::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    vec![],
                    Bytes::new(),
                )),
            )),
            Record::Completed(Completed::new(fp(), Completion::NotStored(StatusCode::OK))),
        ]
    }

    #[test]
    fn encoding_round_trips_both_ways() {
        for record in samples() {
            let bytes = record.encode();
            let back = Record::decode(&bytes).expect("own encoding decodes");
            assert_eq!(back, record);
            assert_eq!(back.encode(), bytes);
        }
    }

    #[test]
    fn header_order_and_repeats_survive() {
        let Record::Completed(done) = Record::decode(&samples()[2].encode()).expect("decodes")
        else {
            panic!("not completed")
        };
        let Completion::Stored(res) = done.outcome() else {
            panic!("not stored")
        };
        let names: Vec<_> = res.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "set-cookie", "x-b", "set-cookie"]);
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        for record in samples() {
            let bytes = record.encode();
            for cut in 0..bytes.len() {
                assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(
                Record::decode(&long),
                Err(DecodeError("trailing bytes")),
                "trailing byte"
            );
            // Flipping any byte either fails or decodes to something that re-encodes to itself.
            for i in 0..bytes.len().min(64) {
                let mut b = bytes.clone();
                b[i] ^= 0xa5;
                if let Ok(r) = Record::decode(&b) {
                    assert_eq!(r.encode(), b);
                }
            }
        }
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        // A header name in upper case would decode to a lowercase name.
        let mut b = vec![VERSION, TAG_STORED];
        b.extend_from_slice(fp().as_bytes());
        b.extend_from_slice(&200u16.to_be_bytes());
        b.extend_from_slice(&[1, 1, b'A', 1, b'v', 0]);
        assert_eq!(Record::decode(&b), Err(DecodeError("invalid header name")));
        // A varint with a redundant continuation byte.
        let mut b = vec![VERSION, TAG_STORED];
        b.extend_from_slice(fp().as_bytes());
        b.extend_from_slice(&200u16.to_be_bytes());
        b.extend_from_slice(&[0x80, 0x00, 0]);
        assert_eq!(
            Record::decode(&b),
            Err(DecodeError("varint not in shortest form"))
        );
        assert_eq!(Record::decode(&[2]), Err(DecodeError("unknown version")));
        assert_eq!(Record::decode(&[]), Err(DecodeError("truncated")));
    }

    #[test]
    fn varint_round_trips_at_the_edges() {
        for n in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut r = Reader(&out);
            assert_eq!(r.varint(), Ok(n));
            assert!(r.0.is_empty());
        }
        // 10 bytes whose last carries more than the top bit.
        let mut r = Reader(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(r.varint(), Err(DecodeError("varint overflows")));
    }
}
