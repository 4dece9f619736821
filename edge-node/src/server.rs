//! Accept loops for the edge's HTTP listeners (proxy and admin): HTTP/1.1 and h2 on one
//! port, a header-read timeout, and a graceful drain bounded in time.
//!
//! ```text
//!  accept ─> spawn(conn watched by GracefulShutdown) ... shutdown signal
//!    └─ stop accepting ─> ask every connection to finish ─> wait (<= drain) ─> done
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::Body;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the requests of one listener.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(
        &self,
        remote: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Resolves once `shutdown` says so (or its sender is gone).
pub async fn signalled(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped, which is a shutdown too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves `listener` until `shutdown`, then drains for at most `drain`.
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signalled(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(remote, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::debug!(listener = name, "draining connections");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            listener = name,
            ?drain,
            "connections still open after the drain period; closing them"
        );
    }
}
