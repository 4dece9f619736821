use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::body;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::target::Target;
use crate::upstream::Clients;

/// An upstream that counts the connections it accepted and answers `/close` with
/// `Connection: close`, `/big` with 1 MiB, anything else with "hello".
async fn upstream(connections: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = match req.uri().path() {
                        "/big" => Bytes::from(vec![b'x'; 1 << 20]),
                        "/empty" => Bytes::new(),
                        _ => Bytes::from_static(b"hello"),
                    };
                    let mut resp = Response::new(Full::new(body));
                    if req.uri().path() == "/close" {
                        resp.headers_mut()
                            .insert("connection", HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

struct Setup {
    client: HttpClient,
    dest: Destination,
    endpoint: Arc<Endpoint>,
    connections: Arc<AtomicUsize>,
    /// Whether requests take the lean path (a GET) or hyper's (a POST with a body).
    lean: bool,
}

async fn setup() -> Setup {
    setup_for(false).await
}

/// Runs `test` once on each path.
async fn both<F: std::future::Future<Output = ()>>(test: impl Fn(Setup) -> F) {
    test(setup_for(false).await).await;
    test(setup_for(true).await).await;
}

async fn setup_for(lean: bool) -> Setup {
    let connections = Arc::new(AtomicUsize::new(0));
    let addr = upstream(connections.clone()).await;
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    Setup {
        client: Clients::default().get(Duration::from_secs(1)),
        dest: target.dest,
        endpoint: Arc::new(Endpoint::new(crate::clock::now())),
        connections,
        lean,
    }
}

/// A request to `path` on hyper's path: a POST with a body.
fn get(path: &'static str) -> Request<Body> {
    Request::post(path).body(body::full("x")).unwrap()
}

impl Setup {
    fn request(&self, path: &'static str) -> Request<Body> {
        if self.lean {
            Request::get(path).body(body::full(Bytes::new())).unwrap()
        } else {
            get(path)
        }
    }

    /// One request; reads the answer to its end and gives the connection back (like the
    /// proxy's answer body does).
    async fn call(&self, client: &HttpClient, path: &'static str) -> Bytes {
        let (resp, conn) = client
            .send(&self.dest, self.endpoint.idle(), self.request(path))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(matches!(resp.body(), UpstreamBody::Lean(_)), self.lean);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(conn) = conn {
            release(self.endpoint.idle(), conn);
        }
        body
    }
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    both(|s| async move {
        for _ in 0..5 {
            assert_eq!(s.call(&s.client, "/").await, "hello");
        }
        assert_eq!(s.call(&s.client, "/big").await.len(), 1 << 20);
        assert_eq!(s.call(&s.client, "/empty").await.len(), 0);
        assert_eq!(s.connections.load(SeqCst), 1, "one connection for every request");
        assert_eq!(s.endpoint.idle().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_answer_not_read_to_the_end_costs_its_connection() {
    both(|s| async move {
        let (resp, conn) = s
            .client
            .send(&s.dest, s.endpoint.idle(), s.request("/big"))
            .await
            .unwrap();
        assert_eq!(conn.is_some(), !s.lean);
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop((body, conn));
        assert_eq!(s.endpoint.idle().len(), 0);
        assert_eq!(s.call(&s.client, "/").await, "hello");
        assert_eq!(s.connections.load(SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_used_again() {
    both(|s| async move {
        // The upstream closes after answering; the connection was given back all the same.
        assert_eq!(s.call(&s.client, "/close").await, "hello");
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..3 {
            assert_eq!(s.call(&s.client, "/").await, "hello");
        }
        assert_eq!(s.connections.load(SeqCst), 2);
    })
    .await;
}

/// Two clients share an endpoint only across a config change (new connect or TLS options):
/// connections made under the old options are never used under the new ones, and the old
/// client's last requests leave the new one's connections alone.
#[tokio::test]
async fn another_clients_connections_are_never_used() {
    both(|s| async move {
        s.call(&s.client, "/").await;
        let newer = Clients::default().get(Duration::from_secs(1));
        s.call(&newer, "/").await;
        assert_eq!(s.connections.load(SeqCst), 2);
        assert_eq!(
            s.endpoint.idle().len(),
            1,
            "the older client's connection was dropped"
        );
        // The older client skips the newer one's connection and connects anew.
        s.call(&s.client, "/").await;
        assert_eq!(s.connections.load(SeqCst), 3);
        assert_eq!(s.endpoint.idle().len(), 2);
        // The newer one finds its own (and drops the older one's on the way).
        s.call(&newer, "/").await;
        assert_eq!(s.connections.load(SeqCst), 3);
        assert_eq!(s.endpoint.idle().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn idle_connections_expire_and_are_capped() {
    let s = setup().await;
    s.call(&s.client, "/").await;
    let later = crate::clock::now() + IDLE_TIMEOUT.as_nanos() as u64 + 1;
    assert!(
        s.endpoint.idle().hyper.take(s.client.id, later).is_none(),
        "an expired connection was reused"
    );
    assert_eq!(s.endpoint.idle().len(), 0);

    // Past the cap, the oldest go.
    let capped = IdleList::with_max(2);
    let mut held = Vec::new();
    for _ in 0..3 {
        let (resp, conn) = s.client.send(&s.dest, s.endpoint.idle(), get("/")).await.unwrap();
        resp.into_body().collect().await.unwrap();
        held.push(conn.unwrap());
    }
    for (i, conn) in held.into_iter().enumerate() {
        capped.hyper.put(conn, crate::clock::now() + i as u64);
    }
    assert_eq!(capped.len(), 2);
    let kept: Vec<u64> = capped
        .hyper
        .list
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.since)
        .collect();
    assert!(kept[0] < kept[1], "the newest are kept, oldest first: {kept:?}");
    assert!(capped.hyper.take(s.client.id, crate::clock::now() + 10).is_some());
    assert_eq!(capped.len(), 1);
}

#[tokio::test]
async fn connect_failures_say_so() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let target = Target::parse(&format!("http://{closed}")).unwrap();
    let client = Clients::default().get(Duration::from_secs(1));
    let endpoint = Arc::new(Endpoint::new(crate::clock::now()));
    let lean = Request::get("/").body(body::full(Bytes::new())).unwrap();
    for req in [get("/"), lean] {
        let Err(err) = client.send(&target.dest, endpoint.idle(), req).await else {
            panic!("a closed port answered");
        };
        assert!(matches!(err, ClientError::Connect(_)), "{err:?}");
        assert_eq!(err.to_string(), "cannot connect");
        let detail = crate::error::chain(&err);
        assert!(
            detail.starts_with("cannot connect: ") && detail.len() > "cannot connect: ".len(),
            "{detail}"
        );
    }
}
