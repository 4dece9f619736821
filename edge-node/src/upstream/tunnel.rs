//! Upgraded connections (WebSocket and other `101` upgrades): once both sides have switched,
//! bytes are copied both ways in a task of their own, which stays under the listener's
//! accounting. It holds its connection's slot ([`Held`]), so tunnels count against
//! `--max-connections`; it ends when either side closes, when neither side has sent a byte
//! for the idle timeout (`--upgrade-idle-timeout`), or at the end of a graceful drain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{self, Body};
use crate::listen::Held;
use crate::upstream::forward::remove_hop_by_hop;

/// Answers the client with the upstream's 101 and, once both sides have switched, copies
/// bytes both ways until either closes, the tunnel is idle for `idle`, or the drain ends.
pub fn splice<B>(
    client: hyper::upgrade::OnUpgrade,
    mut resp: Response<B>,
    request_id: &HeaderValue,
    idle: Duration,
    held: Option<Held>,
) -> Response<Body> {
    let upstream = hyper::upgrade::on(&mut resp);
    let id = request_id.clone();
    tokio::spawn(async move {
        let id = id.to_str().unwrap_or_default();
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(request_id = id, error = %e, "upgrade failed");
                return;
            }
        };
        let activity = Activity::new();
        let mut client = Active::new(TokioIo::new(client), &activity);
        let mut upstream = Active::new(TokioIo::new(upstream), &activity);
        let mut held = held;
        let drained = async {
            match held.as_mut() {
                Some(h) => h.drained().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = activity.idle_for(idle) => tracing::debug!(request_id = id, ?idle, "idle upgraded connection closed"),
            _ = drained => tracing::debug!(request_id = id, "upgraded connection closed by the drain"),
        }
        // Dropping both sides closes them; dropping `held` frees the connection's slot.
    });
    let (mut parts, _) = resp.into_parts();
    let protocol = parts.headers.get(UPGRADE).cloned();
    remove_hop_by_hop(&mut parts.headers);
    if let Some(p) = protocol {
        parts.headers.insert(UPGRADE, p);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Response::from_parts(parts, body::full(bytes::Bytes::new()))
}

/// When a tunnel last moved a byte, in ms since it opened.
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Resolves once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One side of a tunnel, noting each byte moved.
struct Active<IO> {
    io: IO,
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl<IO> Active<IO> {
    fn new(io: IO, a: &Activity) -> Self {
        Self {
            io,
            start: a.start,
            last_ms: a.last_ms.clone(),
        }
    }

    fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Active<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Active<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
