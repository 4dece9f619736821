//! Slow clients, request bodies: a client that stops sending its body for longer than the
//! body-read timeout (`--body-read-timeout`, 30 s by default) is cut off. The clock runs only
//! while the edge is waiting for the client (a slow upstream that stops reading does not
//! count), and restarts with every frame received.
//!
//! ```text
//!  upstream send polls the body ─> client sends a frame ─> clock reset
//!                               └─ nothing for the timeout ─> BodyStalled
//!     ─> no answer to the client yet: 408 body_timeout   (forward::classify)
//!     ─> the answer already started: the exchange is cut
//! ```
//! (The header-read timeout is hyper's, set in `listen/mod.rs`.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The client sent no body bytes for the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body that fails with [`BodyStalled`] when the client stops sending it.
#[derive(Debug)]
pub struct StallGuard<B> {
    inner: B,
    timeout: Duration,
    /// Armed while waiting for the client; created on the first wait.
    clock: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// Bytes received so far, for the call record.
    received: Option<Arc<AtomicU64>>,
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            clock: None,
            waiting: false,
            received: None,
        }
    }

    /// Counts the body's bytes into `received`.
    pub fn counting(mut self, received: Option<Arc<AtomicU64>>) -> Self {
        self.received = received;
        self
    }
}

impl<B> HttpBody for StallGuard<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if let (Some(n), Some(Ok(f))) = (&this.received, &frame) {
                    if let Some(data) = f.data_ref() {
                        n.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.timeout;
                let clock = this
                    .clock
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    this.waiting = true;
                    clock.as_mut().reset(deadline);
                }
                match clock.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    type Chunks = StreamBody<ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>>;

    fn body() -> (
        mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>,
        StallGuard<Chunks>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let guarded = StallGuard::new(StreamBody::new(ReceiverStream::new(rx)), Duration::from_secs(30));
        (tx, guarded)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_timeout() {
        let (tx, mut b) = body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "abc");
        let started = Instant::now();
        let err = b.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyStalled>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_passes() {
        let (tx, mut b) = body();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            }
        });
        let mut n = 0;
        while let Some(f) = b.frame().await {
            n += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(n, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_edge_spends_not_reading_does_not_count() {
        let (tx, mut b) = body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        assert!(b.frame().await.is_some());
        // The upstream is slow to read: nobody polls the body for a minute.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await.unwrap();
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "b");
    }
}
