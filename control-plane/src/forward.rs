//! Relaying an admin call to the leader: marking the copy as forwarded (so it is never
//! forwarded twice) and deciding whether a failed attempt may be sent again.
//!
//! ```text
//!   follower ── forwarded(req) ──▶ leader
//!      ▲                              │
//!      └── Err(status) ── retryable? ─┘   yes: wait for a new leader, send again
//!                                         no:  the caller gets the status
//! ```
//!
//! Invariant: a retry never applies a write twice. An attempt is retried only when it surely
//! changed nothing: the leader said so ([`NOT_APPLIED`] metadata), or the request never left
//! this node because no connection to the leader could be opened. The latter is decided from
//! the error's concrete types, never from its text.

use std::error::Error;
use std::io;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

use crate::error::NOT_APPLIED;

/// Metadata set on calls a node forwards to the leader, so they are never forwarded twice.
const FORWARDED: &str = "x-tollgate-forwarded";

/// A copy of `req` for the leader, with its metadata, marked as forwarded.
pub fn forwarded<T: Clone>(req: &Request<T>) -> Request<T> {
    let mut copy = Request::new(req.get_ref().clone());
    *copy.metadata_mut() = req.metadata().clone();
    copy.metadata_mut()
        .insert(FORWARDED, MetadataValue::from_static("1"));
    copy
}

/// Whether `req` was already forwarded by another node.
pub fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

/// Whether a failed call may be sent again: it surely changed nothing.
pub fn retryable(s: &Status) -> bool {
    s.metadata().contains_key(NOT_APPLIED) || never_sent(s)
}

/// Whether `e` failed before its request left this node: the channel's connector (tonic
/// wraps its failures in [`tonic::ConnectError`]) could not open a TCP connection to the
/// peer (refused, unreachable, timed out). A request is only written to an established
/// HTTP/2 connection, so none was sent.
///
/// Everything else may have reached the peer and is not retried: a status the server
/// answered (whatever its text), a connection reset or closed during the call, a TLS
/// refusal (a later attempt cannot fix it), a DNS failure. Under mTLS tonic applies the
/// connect timeout outside the connector, so a timed-out mTLS connect is not retried
/// either: refusing a retry is always safe.
fn never_sent(e: &(dyn Error + 'static)) -> bool {
    let mut connecting = false;
    let mut cur = e.source();
    while let Some(err) = cur {
        connecting |= err.is::<tonic::ConnectError>();
        if let Some(io) = err.downcast_ref::<io::Error>().filter(|_| connecting) {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::TimedOut
            );
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;
    use tollgate_proto::v1::raft_client::RaftClient;
    use tollgate_proto::v1::raft_server::{Raft, RaftServer};
    use tollgate_proto::v1::RaftPayload;
    use tonic::Response;

    use super::*;
    use crate::error::AdminError;

    /// One call over a real channel to `addr`, built as the forwarding path builds it.
    async fn call(addr: std::net::SocketAddr) -> Status {
        let channel = crate::raft::channel(&addr.to_string(), None).unwrap();
        let mut client = RaftClient::new(channel);
        let mut req = Request::new(RaftPayload::default());
        req.set_timeout(Duration::from_secs(5));
        client.probe(req).await.expect_err("the call must fail")
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let s = call(addr).await;
        assert!(retryable(&s), "{s:?}");
    }

    #[tokio::test]
    async fn a_connection_dropped_during_the_call_is_not_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            // Take what the client sends (preface, settings, the request), then hang up
            // without answering.
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
            }
        });
        let s = call(addr).await;
        assert!(!retryable(&s), "{s:?}");
    }

    /// A peer that answers every call with the status `answer` builds.
    struct Answers(fn() -> Status);

    #[tonic::async_trait]
    impl Raft for Answers {
        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err((self.0)())
        }
        async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err((self.0)())
        }
        async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err((self.0)())
        }
        async fn probe(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err((self.0)())
        }
        async fn edges(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err((self.0)())
        }
    }

    async fn answering(answer: fn() -> Status) -> Status {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(Answers(answer)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        call(addr).await
    }

    #[tokio::test]
    async fn a_status_the_server_answered_is_not_retryable_whatever_its_text() {
        let s =
            answering(|| Status::unavailable("tcp connect error: Connection refused (os error 111)")).await;
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(!retryable(&s), "{s:?}");
    }

    #[tokio::test]
    async fn a_leader_saying_not_applied_is_retryable() {
        let s = answering(|| AdminError::NotApplied("leadership changed").into()).await;
        assert_eq!(s.message(), "leadership changed; retry");
        assert!(retryable(&s), "{s:?}");
    }

    #[test]
    fn local_errors_are_retryable_only_when_not_applied() {
        assert!(retryable(&AdminError::NotApplied("leadership is moving").into()));
        assert!(!retryable(
            &AdminError::Unavailable("raft: tcp connect error".into()).into()
        ));
        assert!(!retryable(&Status::from(io::Error::from(
            io::ErrorKind::ConnectionRefused
        ))));
    }
}
