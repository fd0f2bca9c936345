//! Free loopback ports and waiting for a port to open or close.
//!
//! A port is picked by binding `127.0.0.1:0` and letting the kernel choose.
//! The listener is closed before the server binds, so another process could in
//! principle take the port in between; to at least rule out handing the same
//! port out twice within one test binary (tests run on parallel threads), the
//! ports already given out are remembered.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that nothing listens on right now and that this test
/// binary has not handed out before.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found in 100 attempts");
}

/// `127.0.0.1:PORT`.
pub fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn resolve(addr: &str) -> SocketAddr {
    addr.to_socket_addrs()
        .unwrap_or_else(|e| panic!("address {addr:?} does not resolve: {e}"))
        .next()
        .unwrap_or_else(|| panic!("address {addr:?} resolves to nothing"))
}

/// True if a TCP connect to `addr` succeeds right now.
pub fn port_is_open(addr: &str) -> bool {
    TcpStream::connect_timeout(&resolve(addr), Duration::from_millis(500)).is_ok()
}

/// Polls until `addr` accepts a TCP connection; false after `timeout`.
pub fn wait_for_port(addr: &str, timeout: Duration) -> bool {
    wait_until(timeout, || port_is_open(addr))
}

/// Polls until `addr` refuses TCP connections; false after `timeout`.
pub fn wait_for_port_closed(addr: &str, timeout: Duration) -> bool {
    wait_until(timeout, || !port_is_open(addr))
}

/// Polls `cond` every 50 ms until it is true (returns true) or `timeout` has
/// passed (returns false). `cond` is always tried at least once.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}
