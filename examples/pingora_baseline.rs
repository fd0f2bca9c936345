//! The smallest pingora HTTP proxy: one fixed plain-HTTP upstream, no
//! filters, no logging, pingora's own `Server` with 2 threads. It is the
//! baseline `benches/pingora_baseline.sh` measures continuity's gateway
//! against: what pingora's proxy path costs by itself on this machine.
//!
//! `cargo run --release --example pingora_baseline -- LISTEN UPSTREAM`
//! (both `host:port`). Test and bench tooling only; not part of the product.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Fixed(SocketAddr);

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: pingora_baseline LISTEN UPSTREAM (host:port each)");
        std::process::exit(64);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upstream {upstream}: {e}");
            std::process::exit(64);
        }
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Fixed(upstream));
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
