//! Reading a keyed request's body, bounded, and collecting a response's.

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use kneo_core::BoxError;

use super::answer::problems;
use kneo_core::problem::ProblemResponse;

/// Reads a keyed request's body, up to `max` bytes.
pub(crate) async fn read_request<B>(
    body: B,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ProblemResponse>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| usize::try_from(len).map_or(true, |len| len > max)) {
        return Err(problems::too_large(max));
    }
    let mut body = std::pin::pin!(body);
    let mut buf = Buffer::Empty;
    while let Some(frame) = body.as_mut().frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    buf.push(data);
                    if buf.len() > max {
                        return Err(problems::too_large(max));
                    }
                }
            }
            Err(error) => {
                let error: BoxError = error.into();
                tracing::debug!(%error, "keyed request body could not be read");
                return Err(problems::unreadable());
            }
        }
    }
    Ok(buf.freeze())
}

/// A response body being collected, copied only when it comes in pieces.
pub(crate) enum Buffer {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Buffer {
    pub(crate) fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Buffer::Empty) {
            Buffer::Empty => Buffer::One(data),
            Buffer::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Buffer::Many(many)
            }
            Buffer::Many(mut many) => {
                many.extend_from_slice(&data);
                Buffer::Many(many)
            }
        };
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(b) => b.len(),
            Buffer::Many(b) => b.len(),
        }
    }

    pub(crate) fn freeze(self) -> Bytes {
        match self {
            Buffer::Empty => Bytes::new(),
            Buffer::One(b) => b,
            Buffer::Many(b) => b.freeze(),
        }
    }
}
