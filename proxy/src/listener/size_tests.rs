#![allow(clippy::unwrap_used)]
//! What one connection's task costs while it idles (issue 16: at most
//! 4 KiB per idle proxied connection, sockets and bookkeeping included).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::{handle, Signals};
use crate::config::{Kind, Role, ServiceConfig, UpstreamConfig};
use crate::upstream::runtime::ServiceRt;

/// A redis service (`multiplex` as given), a connected client socket, the
/// engine's signals and the sender that keeps them open.
async fn fixture(multiplex: bool) -> (Arc<ServiceRt>, TcpStream, Signals, watch::Sender<bool>) {
    fixture_of(Kind::Redis, multiplex).await
}

/// As [`fixture`], for a service of `kind`.
async fn fixture_of(
    kind: Kind,
    multiplex: bool,
) -> (Arc<ServiceRt>, TcpStream, Signals, watch::Sender<bool>) {
    let mut cfg = ServiceConfig::new(
        "cache",
        kind,
        vec![UpstreamConfig::at("r1", "127.0.0.1:1", Role::Primary)],
    );
    cfg.multiplex = multiplex;
    let svc = ServiceRt::detached(cfg);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let sig = Signals {
        shutdown: stop_rx.clone(),
        force_close: stop_rx,
        open: Arc::new(AtomicU64::new(0)),
    };
    (svc, client, sig, stop)
}

/// The state a connection's future keeps across its awaits. Rare paths
/// (the memory fallback, the refusal of a held client) are boxed so that
/// an idle relay does not carry their state.
#[tokio::test]
async fn connection_task_is_small() {
    let (svc, client, sig, stop) = fixture(false).await;
    let fut = handle(svc, None, client, sig, Handle::current());
    let size = std::mem::size_of_val(&fut);
    drop(fut);
    drop(stop);
    assert!(size <= 2048, "a connection's future is {size} bytes");
}

/// A multiplexed client's task and its reply side, idle.
#[tokio::test]
async fn multiplexed_client_is_small() {
    let (svc, client, sig, stop) = fixture(true).await;
    let fut = super::mux::serve(svc, client, sig, Handle::current());
    let size = std::mem::size_of_val(&fut);
    drop(fut);
    drop(stop);
    // Its own task (listener/mod.rs): none of a relay's state.
    assert!(
        size <= 1024,
        "a multiplexed client's future is {size} bytes"
    );
    let sink = super::mux::sink_size();
    assert!(
        sink <= 192,
        "a multiplexed client's reply side is {sink} bytes"
    );
}

/// A multiplexed PostgreSQL client's task, idle after its startup: its
/// future holds the startup's state too (pg.rs), and stays within the
/// 2 KiB a relay's may take.
#[tokio::test]
async fn multiplexed_postgres_client_is_small() {
    let (svc, client, sig, stop) = fixture_of(Kind::Postgres, true).await;
    let fut = super::mux::serve_pg(svc, client, sig, Handle::current());
    let size = std::mem::size_of_val(&fut);
    drop(fut);
    drop(stop);
    assert!(
        size <= 2048,
        "a multiplexed postgres client's future is {size} bytes"
    );
}
