//! The one capped body reader: error bodies, and success bodies the client decodes.

use bytes::Buf;

/// Appends `data` to `buf`, keeping `buf` within `cap` bytes; `true` when
/// some of `data` did not fit (the body is longer than the cap).
///
/// The allocation stays within `cap` too: `buf` grows by doubling, as a
/// `Vec` does, but never past the cap, so a body longer than the cap costs
/// the cap and not up to twice it.
pub(crate) fn append_capped(buf: &mut Vec<u8>, mut data: impl Buf, cap: usize) -> bool {
    while data.has_remaining() {
        let chunk = data.chunk();
        let take = chunk.len().min(cap.saturating_sub(buf.len()));
        let need = buf.len() + take;
        if need > buf.capacity() {
            let grown = buf.capacity().saturating_mul(2).clamp(need, cap.max(need));
            buf.reserve_exact(grown - buf.len());
        }
        buf.extend_from_slice(&chunk[..take]);
        if take < chunk.len() {
            return true;
        }
        data.advance(take);
    }
    false
}

/// Reads `body` up to `cap` bytes; `true` in the result when it was longer
/// (the rest is not read).
#[cfg(feature = "client")]
pub(crate) async fn read_capped<B>(
    body: B,
    cap: usize,
) -> Result<(bytes::Bytes, bool), kneo_core::BoxError>
where
    B: http_body::Body,
    B::Error: Into<kneo_core::BoxError>,
{
    use bytes::Bytes;
    use http_body_util::BodyExt;

    let mut body = std::pin::pin!(body);
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Into::into)?.into_data() {
            if append_capped(&mut buf, data, cap) {
                return Ok((Bytes::from(buf), true));
            }
        }
    }
    Ok((Bytes::from(buf), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_stops_at_the_cap() {
        let mut buf = Vec::new();
        assert!(!append_capped(&mut buf, &b"abc"[..], 5));
        assert!(append_capped(&mut buf, &b"def"[..], 5));
        assert_eq!(buf, b"abcde");
        assert!(append_capped(&mut buf, &b"x"[..], 5));
        assert_eq!(buf, b"abcde");
    }

    #[test]
    fn the_buffer_never_grows_past_the_cap() {
        let cap = 64 * 1024;
        let mut buf = Vec::new();
        let chunk = [7u8; 24 * 1024];
        // 24 KiB, 48 KiB, then 16 KiB of the third chunk: a Vec left to
        // itself would double to 96 KiB for the last append.
        assert!(!append_capped(&mut buf, &chunk[..], cap));
        assert!(!append_capped(&mut buf, &chunk[..], cap));
        assert!(append_capped(&mut buf, &chunk[..], cap));
        assert_eq!(buf.len(), cap);
        assert!(buf.capacity() <= cap, "capacity {}", buf.capacity());
    }
}
