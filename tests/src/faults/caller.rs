//! A caller that gives up: one keyed `POST /charges` over a raw TCP
//! connection, closed exactly where the test says (before the body is all
//! sent, while the handler runs, while the response streams) or read to its
//! end.
//!
//! Raw TCP, with the response parsed here, because a client library decides
//! for itself when bytes go out and when a connection closes; this caller
//! must decide it to the byte. One request per connection (`Connection:
//! close`), so a response is read to the end of the stream.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where an attempt was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Point {
    /// Before the request body was all sent.
    BeforeBody,
    /// The request sent, while the handler runs.
    InHandler,
    /// The response head read, part of its body, then closed.
    WhileStreaming,
}

impl Point {
    /// Every point, in the order of a request's life.
    pub const ALL: [Point; 3] = [Point::BeforeBody, Point::InHandler, Point::WhileStreaming];

    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Point::BeforeBody => "before_body",
            Point::InHandler => "in_handler",
            Point::WhileStreaming => "while_streaming",
        }
    }
}

/// How an attempt is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Abandon {
    /// The head and the first `sent` bytes of the body (`Content-Length`
    /// says all of it), then, `after` later, close.
    BeforeBody {
        /// Body bytes sent.
        sent: usize,
        /// The pause before the close.
        after: Duration,
    },
    /// The whole request, then, `after` later, close without reading.
    InHandler {
        /// The time from the request's last byte to the close.
        after: Duration,
    },
    /// The whole request; read the response head and `read` bytes after it,
    /// then close. A response that ends sooner is an [`Attempt::Answer`].
    WhileStreaming {
        /// Bytes of the (framed) response body read before the close.
        read: usize,
    },
}

impl Abandon {
    /// Where it gives up.
    pub fn point(&self) -> Point {
        match self {
            Abandon::BeforeBody { .. } => Point::BeforeBody,
            Abandon::InHandler { .. } => Point::InHandler,
            Abandon::WhileStreaming { .. } => Point::WhileStreaming,
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Attempt {
    /// The caller hung up as planned.
    Abandoned(Point),
    /// A whole response.
    Answer(Answer),
    /// No whole response, though the caller did not hang up: a refused or
    /// reset connection, a response cut or malformed, or the attempt's time
    /// ran out. Why, in words.
    Broken(String),
}

/// A whole response.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, its chunked framing removed.
    pub body: Bytes,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Idempotent-Replayed: true`.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// `Retry-After` in seconds, if it parses as such.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")?
            .trim()
            .parse()
            .ok()
            .map(Duration::from_secs)
    }

    /// A problem body's `code`.
    pub fn code(&self) -> Option<String> {
        let problem: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        problem["code"].as_str().map(str::to_owned)
    }
}

/// One keyed `POST /charges` of `body` to `addr` with `Idempotency-Key: key`,
/// given up as `abandon` says (or read to its end, for at most `timeout`).
pub async fn attempt(
    addr: SocketAddr,
    key: &str,
    body: &[u8],
    abandon: Option<Abandon>,
    timeout: Duration,
) -> Attempt {
    match tokio::time::timeout(timeout, exchange(addr, key, body, abandon)).await {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(e)) => Attempt::Broken(e.to_string()),
        Err(_) => Attempt::Broken(format!("no whole response in {timeout:?}")),
    }
}

async fn exchange(
    addr: SocketAddr,
    key: &str,
    body: &[u8],
    abandon: Option<Abandon>,
) -> std::io::Result<Attempt> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST /charges HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         idempotency-key: {key}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if let Some(Abandon::BeforeBody { sent, after }) = abandon {
        stream.write_all(&body[..sent.min(body.len())]).await?;
        tokio::time::sleep(after).await;
        drop(stream);
        return Ok(Attempt::Abandoned(Point::BeforeBody));
    }
    stream.write_all(body).await?;
    if let Some(Abandon::InHandler { after }) = abandon {
        tokio::time::sleep(after).await;
        drop(stream);
        return Ok(Attempt::Abandoned(Point::InHandler));
    }
    let read_before_close = match abandon {
        Some(Abandon::WhileStreaming { read }) => Some(read),
        _ => None,
    };
    let mut buf = Vec::with_capacity(2048);
    loop {
        if let (Some(read), Some(end)) = (read_before_close, head_end(&buf)) {
            if buf.len() - end >= read {
                drop(stream);
                return Ok(Attempt::Abandoned(Point::WhileStreaming));
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(match parse(&buf) {
        Ok(answer) => Attempt::Answer(answer),
        Err(why) => Attempt::Broken(why),
    })
}

/// The offset just past the head's blank line, once it is all in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A whole HTTP/1.1 response, as read to the end of its connection.
pub fn parse(raw: &[u8]) -> Result<Answer, String> {
    let end = head_end(raw).ok_or_else(|| format!("no whole head in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end - 4]).map_err(|_| "a head that is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("a bad status line: {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a bad header line: {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let rest = &raw[end..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("a bad content-length: {len:?}"))?;
        if rest.len() < len {
            return Err(format!("a body cut at {} of {len} bytes", rest.len()));
        }
        Bytes::copy_from_slice(&rest[..len])
    } else {
        Bytes::copy_from_slice(rest)
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// A chunked body, whole, without its framing (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Bytes, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line cut off")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "a bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("a bad chunk size {size:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Bytes::from(body));
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes cut off"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whole_responses_and_refuses_cut_ones() {
        let chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nIdempotent-Replayed: true\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let answer = parse(chunked).expect("a whole chunked response");
        assert_eq!(answer.status, 201);
        assert_eq!(&answer.body[..], b"abcde");
        assert!(answer.replayed());

        let problem = b"HTTP/1.1 409 Conflict\r\nretry-after: 1\r\ncontent-length: 33\r\n\r\n{\"code\":\"idempotency_key_in_use\"}";
        let answer = parse(problem).expect("a whole response");
        assert_eq!(answer.status, 409);
        assert_eq!(answer.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(answer.code().as_deref(), Some("idempotency_key_in_use"));
        assert!(!answer.replayed());

        let cut = [
            &b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 201 Created\r\ncontent-le",
            b"",
            b"SSH-2.0\r\n\r\n",
        ];
        for raw in cut {
            assert!(parse(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
        }
    }
}
