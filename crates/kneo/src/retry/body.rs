//! A request body that can be sent again.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use kneo_core::BoxError;

/// A request body that records what it sends, up to a cap, so that a retry
/// can send it again byte for byte.
///
/// The retry layer wraps every request body in one. Clones share the
/// recording: the clone kept for a retry replays the recorded frames, then
/// carries on reading the original body where the last attempt left off (a
/// server may answer before reading everything). Data is kept as [`Bytes`],
/// so bodies that are already `Bytes` (`Full<Bytes>`, say) replay without a
/// copy.
///
/// A body larger than the cap is still sent, once: recording stops, the
/// buffer is freed, and [`is_replayable`](ReplayBody::is_replayable) turns
/// false, so the retry layer returns the failure instead of retrying. It is
/// never an error before sending.
pub struct ReplayBody<B> {
    /// `None` for a body that was empty from the start: nothing to record,
    /// so nothing is allocated (a GET's body, most often).
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// The original body, while this clone is the one reading it.
    body: Option<B>,
    /// How many data frames this clone has sent.
    pos: usize,
    /// How many bytes this clone has sent.
    sent: u64,
    trailers_sent: bool,
}

struct Shared<B> {
    /// The original body, parked while no clone reads it.
    body: Option<B>,
    /// The recording: every data frame read so far, unless spoiled.
    frames: Vec<Bytes>,
    /// How many data frames have been read from the original body.
    read: usize,
    len: usize,
    cap: usize,
    /// Recording stopped: over the cap, or the original body failed.
    spoiled: bool,
    /// The original body reached its end; `frames` hold all of it.
    complete: bool,
    trailers: Option<HeaderMap>,
    /// What the original body said of itself before a byte was read: every
    /// copy says the same, so every attempt is framed alike (no body, a
    /// `content-length`, or chunked) whatever an earlier attempt read.
    size_hint: SizeHint,
    end_stream: bool,
    /// A clone waiting for the body to be parked by the one reading it.
    waiting: Option<Waker>,
}

/// The error a clone returns if it is sent after recording stopped. The
/// retry layer never does that; it is there for anyone else cloning.
#[derive(Debug)]
struct NotReplayable;

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request body was larger than the replay buffer and cannot be sent again")
    }
}

impl std::error::Error for NotReplayable {}

impl<B> Shared<B> {
    /// Counts a data frame read from the original body, and keeps it while
    /// the recording stays under the cap.
    fn record(&mut self, bytes: &Bytes) {
        self.read += 1;
        if self.spoiled {
            return;
        }
        if self.len + bytes.len() > self.cap {
            self.spoil();
        } else {
            self.len += bytes.len();
            self.frames.push(bytes.clone());
        }
    }

    /// Stops recording for good (over the cap, or the body failed) and
    /// frees what was kept.
    /// A frame read from the original body, as every copy sends it: data
    /// recorded; trailers kept, and the body complete now (they are the
    /// last frame, whether or not anyone polls for the end: hyper does not),
    /// so a replay sends them too. `None` for a frame kind http-body does
    /// not know yet.
    fn pass_on<D: Buf>(&mut self, frame: Frame<D>) -> Option<Frame<Bytes>> {
        match frame.into_data() {
            Ok(mut data) => {
                let bytes = data.copy_to_bytes(data.remaining());
                self.record(&bytes);
                Some(Frame::data(bytes))
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok()?;
                self.trailers = Some(trailers.clone());
                self.complete = true;
                Some(Frame::trailers(trailers))
            }
        }
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.frames = Vec::new();
    }
}

fn lock<B>(m: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // No code path panics while holding the lock; if one ever did, the state
    // is still consistent enough to read.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, recording up to `cap` bytes of it.
    pub fn new(body: B, cap: usize) -> Self {
        // Not spoiled up front even when the length is known to exceed the
        // cap: until a byte is sent (a connect failure, say) it can be sent again.
        let size_hint = body.size_hint();
        let end_stream = body.is_end_stream();
        if end_stream {
            return ReplayBody {
                shared: None,
                body: Some(body),
                pos: 0,
                sent: 0,
                trailers_sent: true,
            };
        }
        ReplayBody {
            shared: Some(Arc::new(Mutex::new(Shared {
                body: None,
                frames: Vec::new(),
                read: 0,
                len: 0,
                cap,
                spoiled: false,
                complete: false,
                trailers: None,
                size_hint,
                end_stream,
                waiting: None,
            }))),
            body: Some(body),
            pos: 0,
            sent: 0,
            trailers_sent: false,
        }
    }
}

impl<B> ReplayBody<B> {
    /// `false` once the body outgrew the cap (or failed): a clone cannot send it again.
    pub fn is_replayable(&self) -> bool {
        self.shared
            .as_deref()
            .is_none_or(|shared| !lock(shared).spoiled)
    }
}

impl<B> Clone for ReplayBody<B> {
    fn clone(&self) -> Self {
        ReplayBody {
            shared: self.shared.clone(),
            body: None,
            pos: 0,
            sent: 0,
            trailers_sent: false,
        }
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let (Some(body), Some(shared)) = (self.body.take(), &self.shared) {
            let mut shared = lock(shared);
            if !shared.complete {
                shared.body = Some(body);
            }
            if let Some(waker) = shared.waiting.take() {
                waker.wake();
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        match self.shared.as_deref().map(lock) {
            Some(shared) => d
                .field("recorded", &shared.len)
                .field("cap", &shared.cap)
                .field("replayable", &!shared.spoiled)
                .field("complete", &shared.complete),
            None => d.field("empty", &true),
        };
        d.finish()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        // Empty from the start: every copy ends at once.
        let Some(cell) = this.shared.as_deref() else {
            return Poll::Ready(None);
        };
        let mut shared = lock(cell);

        // 1. Replay what an earlier attempt read. A clone that is behind
        // the original body can only catch up from the recording: if that
        // was dropped, sending the rest would send a body missing its start.
        if this.pos < shared.read {
            if shared.spoiled {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            let frame = shared.frames[this.pos].clone();
            this.pos += 1;
            this.sent += frame.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if shared.complete {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = &shared.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
            }
            return Poll::Ready(None);
        }

        // 2. Read on from the original body.
        if this.body.is_none() {
            match shared.body.take() {
                Some(body) => this.body = Some(body),
                None => {
                    // Another clone (an earlier attempt still being torn
                    // down) holds it; it parks it and wakes us on drop.
                    shared.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        drop(shared);
        let body = this.body.as_mut().expect("invariant: taken just above");
        let polled = Pin::new(body).poll_frame(cx);
        let mut shared = lock(cell);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.complete = true;
                this.trailers_sent = true;
                this.body = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                shared.spoil();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => match shared.pass_on(frame) {
                Some(frame) => {
                    match frame.data_ref() {
                        Some(data) => {
                            this.pos += 1;
                            this.sent += data.len() as u64;
                        }
                        None => {
                            this.trailers_sent = true;
                            this.body = None;
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                // Neither data nor trailers: a frame kind http-body does
                // not know yet; drop it rather than guess.
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = self.shared.as_deref() else {
            return true;
        };
        let shared = lock(shared);
        shared.end_stream
            || (self.pos == shared.read && self.body.as_ref().is_some_and(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(body) = &self.body {
            return body.size_hint();
        }
        // A copy: what the original said up front, less what this copy sent.
        let Some(shared) = self.shared.as_deref() else {
            return SizeHint::with_exact(0);
        };
        let initial = lock(shared).size_hint;
        let mut hint = SizeHint::new();
        hint.set_lower(initial.lower().saturating_sub(self.sent));
        if let Some(upper) = initial.upper() {
            hint.set_upper(upper.saturating_sub(self.sent));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect<B>(b: B) -> Result<Bytes, BoxError>
    where
        B: Body<Data = Bytes, Error = BoxError>,
    {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn full_body_replays_byte_for_byte() {
        let original = ReplayBody::new(Full::new(Bytes::from_static(b"hello world")), 64);
        let retry = original.clone();
        assert_eq!(collect(original).await.expect("ok"), "hello world");
        assert!(retry.is_replayable());
        let again = retry.clone();
        assert_eq!(collect(retry).await.expect("ok"), "hello world");
        assert_eq!(collect(again).await.expect("ok"), "hello world");
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn chunks(parts: &[&'static str]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let frames: Vec<_> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn partly_read_body_continues_where_it_left_off() {
        let mut original = ReplayBody::new(chunks(&["ab", "cd", "ef"]), 64);
        let retry = original.clone();
        // The first attempt sends one frame, then is dropped (server answered early).
        let first = original.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "ab");
        drop(original);
        assert_eq!(collect(retry).await.expect("ok"), "abcdef");
    }

    #[tokio::test]
    async fn oversize_body_is_sent_once_then_not_replayable() {
        let original = ReplayBody::new(chunks(&["0123", "4567", "89"]), 5);
        let retry = original.clone();
        assert_eq!(collect(original).await.expect("sent in full"), "0123456789");
        assert!(!retry.is_replayable());
        assert!(collect(retry).await.is_err());
    }

    #[tokio::test]
    async fn oversize_body_is_replayable_until_it_is_sent() {
        let body = ReplayBody::new(Full::new(Bytes::from(vec![0u8; 100])), 10);
        let retry = body.clone();
        assert!(
            retry.is_replayable(),
            "nothing sent yet: a connect failure can retry"
        );
        assert_eq!(collect(body).await.expect("still sent").len(), 100);
        assert!(!retry.is_replayable());
    }

    #[tokio::test]
    async fn unsent_body_is_handed_to_the_retry() {
        let original = ReplayBody::new(chunks(&["x", "y"]), 64);
        let retry = original.clone();
        drop(original); // connect failed: never polled
        assert_eq!(collect(retry).await.expect("ok"), "xy");
    }

    #[tokio::test]
    async fn trailers_are_replayed_even_when_the_end_is_never_polled() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().expect("valid"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut original = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 64);
        let retry = original.clone();
        // Like hyper: poll until the trailers frame, then stop and drop.
        let mut got_trailers = None;
        while let Some(frame) = original.frame().await {
            if let Ok(t) = frame.expect("ok").into_trailers() {
                got_trailers = Some(t);
                break;
            }
        }
        assert_eq!(got_trailers.as_ref(), Some(&trailers));
        drop(original);
        let replayed = retry.collect().await.expect("replays");
        assert_eq!(replayed.trailers(), Some(&trailers));
        assert_eq!(replayed.to_bytes(), "ab");
    }

    #[tokio::test]
    async fn every_copy_is_framed_like_the_original() {
        // An empty body: no length, no chunks, on every attempt.
        let empty = ReplayBody::new(Full::<Bytes>::default(), 64);
        let retry = empty.clone();
        assert!(empty.is_end_stream());
        drop(empty);
        assert!(
            retry.is_end_stream(),
            "a retry of an empty body is empty too"
        );
        assert_eq!(retry.size_hint().exact(), Some(0));

        // A sized body keeps its exact length; a stream stays unsized.
        let sized = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 64);
        let retry = sized.clone();
        assert_eq!(collect(sized).await.expect("ok"), "hello");
        assert!(!retry.is_end_stream());
        assert_eq!(retry.size_hint().exact(), Some(5));
        let stream = ReplayBody::new(chunks(&["ab", "cd"]), 64);
        let retry = stream.clone();
        let initial = (stream.size_hint().lower(), stream.size_hint().upper());
        assert_eq!(collect(stream).await.expect("ok"), "abcd");
        assert_eq!(
            (retry.size_hint().lower(), retry.size_hint().upper()),
            initial
        );
        assert_eq!(retry.size_hint().exact(), None, "still chunked");
    }
}
