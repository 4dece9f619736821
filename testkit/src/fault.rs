//! A fault-injecting TCP proxy on loopback: forwards connections to a target until the test
//! cuts the link, then closes every open connection and refuses new ones until it heals.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback TCP proxy to `target`. Stops when dropped.
pub struct LinkProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl LinkProxy {
    pub fn start(target: SocketAddr) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the link proxy");
        let addr = listener.local_addr().expect("link proxy address");
        let (cut, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, stop2, open2) = (cut.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    open2.lock().expect("link proxy poisoned").extend([c, s]);
                }
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        LinkProxy {
            addr,
            cut,
            stop,
            open,
        }
    }

    /// Cuts the link: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().expect("link proxy poisoned").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockServer;
    use crate::raw::send;

    #[test]
    fn forwards_until_cut_and_again_once_healed() {
        let mock = MockServer::start(|_| (200, vec![], "{}".into()));
        let proxy = LinkProxy::start(mock.addr);
        assert_eq!(
            send(proxy.addr, "GET", "/", &[], b"").map(|r| r.status),
            Some(200)
        );
        proxy.cut();
        assert!(send(proxy.addr, "GET", "/", &[], b"").is_none());
        proxy.heal();
        assert_eq!(
            send(proxy.addr, "GET", "/", &[], b"").map(|r| r.status),
            Some(200)
        );
        assert_eq!(mock.hits(), 2);
    }
}
