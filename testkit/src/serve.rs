//! A hyper HTTP/1.1 test server, for what the blocking mocks cannot do: streamed or
//! delayed bodies, protocol upgrades, TLS.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves HTTP/1.1 (upgrades allowed) on `listener` with `handler`, over TLS when `tls` is
/// given, until the test's runtime ends. Each connection runs on its own task.
pub fn http1<F, Fut, B>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, handler) = (tls.clone(), handler.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handler);
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => {
                        http.serve_connection(TokioIo::new(tcp), service)
                            .with_upgrades()
                            .await
                    }
                    Some(acceptor) => {
                        let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                        else {
                            return;
                        };
                        http.serve_connection(TokioIo::new(tls), service)
                            .with_upgrades()
                            .await
                    }
                };
            });
        }
    });
}
