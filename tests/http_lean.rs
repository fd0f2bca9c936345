//! The gateway's lean HTTP/1.1 path (proxy/src/gateway/h1/) against the
//! real binary and a real upstream (scripts/http_upstream.py): the upstream
//! connection pinned to the client's, every response framing relayed
//! (Content-Length, chunked with a trailer, until close, 1xx interim),
//! hop-by-hop fields dropped both ways, pipelined requests answered in
//! order, and what the lean path hands to pingora (a body over 64 KiB,
//! chunked request bodies) still arriving whole.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::continuity::Continuity;
use support::http_client::{self, KeepAlive};
use support::http_upstream::HttpUpstream;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300\ntimeout_ms = 500";

fn start() -> (HttpUpstream, Continuity, String) {
    start_with("")
}

/// `start`, with more keys for the service.
fn start_with(keys: &str) -> (HttpUpstream, Continuity, String) {
    let upstream = HttpUpstream::start("lean-a", None, None, false);
    let listen = format!("127.0.0.1:{}", free_port());
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            "name = \"rms\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{keys}\nupstreams = [\n  {{ name = \"rms-a\", url = \"{}\", role = \"primary\" }},\n]",
            upstream.url()
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, body) = engine.get("/api/ops/health/service/rms");
            body["status"] == "healthy"
        }),
        "rms never healthy"
    );
    (upstream, engine, listen)
}

/// Sends `raw` and reads until the gateway closes the connection.
fn exchange_until_close(addr: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read to close");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_upstream_connection_is_pinned_and_every_framing_is_relayed() {
    let (_upstream, engine, listen) = start();

    // One client connection, one upstream connection, request after request.
    let mut a = KeepAlive::connect(&listen).expect("connect a");
    let first = a.get("/one").expect("GET /one");
    let second = a.get("/two?x=1").expect("GET /two");
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.json()["path"], "/two?x=1");
    let port = first.json()["peer_port"].clone();
    assert!(port.is_u64(), "{first:?}");
    assert_eq!(second.json()["peer_port"], port, "not pinned");
    // Another client connection gets its own.
    let mut b = KeepAlive::connect(&listen).expect("connect b");
    let other = b.get("/three").expect("GET /three");
    assert_ne!(other.json()["peer_port"], port);

    // Forwarding headers, and the request's hop-by-hop fields dropped.
    let echo = http_client::request(
        &listen,
        "GET",
        "/hdr",
        &[
            ("X-Forwarded-For", "10.0.0.1"),
            ("Connection", "X-Private"),
            ("X-Private", "1"),
            ("Keep-Alive", "300"),
        ],
        "",
    )
    .expect("GET /hdr");
    let h = &echo.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("x-private").is_none() && h.get("keep-alive").is_none(),
        "{h}"
    );

    // Chunked (each chunk flushed on its own, a trailer at the end), then
    // the same connection goes on: the end of the body was found.
    let chunked = a.get("/chunked/50").expect("chunked");
    let expected: String = (0..50).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(chunked.body, expected);
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    let after = a.get("/after-chunked").expect("after chunked");
    assert_eq!(
        after.json()["peer_port"],
        port,
        "the pinned connection was lost"
    );

    // A large body streams through intact.
    let big = a.get("/big/1048576").expect("big");
    assert_eq!(big.body.len(), 1_048_576);
    assert!(big.body.starts_with("0123456789abcdef0123"));

    // Hop-by-hop fields of the answer are dropped.
    let hop = a.get("/hop").expect("hop");
    assert_eq!(hop.status, 200);
    assert!(
        hop.header("x-hop").is_none() && hop.header("keep-alive").is_none(),
        "{:?}",
        hop.headers
    );
    assert!(hop.header("connection").is_none(), "{:?}", hop.headers);

    // A HEAD answer has no body, and the connection goes on.
    let raw_head = exchange_until_close(
        &listen,
        format!("HEAD /h HTTP/1.1\r\nHost: {listen}\r\n\r\nGET /tail HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let heads: Vec<&str> = raw_head.matches("HTTP/1.1 200").collect();
    assert_eq!(heads.len(), 2, "{raw_head}");
    assert!(raw_head.contains("\"path\": \"/tail\"") || raw_head.contains("\"path\":\"/tail\""));

    // An answer delimited by the upstream closing: relayed whole, and the
    // client's connection ends with it.
    let eof = exchange_until_close(
        &listen,
        format!("GET /eof/5000 HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes(),
    );
    let (head, body) = eof.split_once("\r\n\r\n").expect("head");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body.len(), 5000);
    assert!(body.bytes().all(|b| b == b'e'));

    // A 103 interim answer is relayed before the final one.
    let interim = exchange_until_close(
        &listen,
        format!("GET /interim HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let early = interim.find("HTTP/1.1 103").expect("no 103");
    let fin = interim.find("HTTP/1.1 200").expect("no 200");
    assert!(early < fin, "{interim}");

    // Pipelined requests are answered in order.
    let piped = exchange_until_close(
        &listen,
        format!(
            "GET /p1 HTTP/1.1\r\nHost: {listen}\r\n\r\nGET /p2 HTTP/1.1\r\nHost: {listen}\r\n\r\nGET /p3 HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let order: Vec<usize> = ["/p1", "/p2", "/p3"]
        .iter()
        .map(|p| piped.find(&format!("\"{p}\"")).expect(p))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{piped}");

    // Requests are in the access log (written in batches, within 50 ms).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let log = engine.log_text();
            log.contains("path=/chunked/50") && log.contains("path=/p3")
        }),
        "{}",
        engine.log_text()
    );
}

#[test]
fn bodies_the_lean_path_does_not_take_still_arrive_whole() {
    let (upstream, engine, listen) = start();
    // A small body (lean path) and a 100 KiB one (handed to pingora).
    for size in [5usize, 100 * 1024] {
        let body = "b".repeat(size);
        let r = http_client::request(&listen, "POST", "/submit", &[], &body).expect("POST");
        assert_eq!(r.status, 200, "{size}: {r:?}");
        assert_eq!(r.json()["body"].as_str().map(str::len), Some(size));
    }
    // A Content-Length that is not digits only is refused before anything
    // goes upstream (Rust and pingora would read `+5` as 5).
    let bad = exchange_until_close(
        &listen,
        format!("POST /smuggle HTTP/1.1\r\nHost: {listen}\r\nContent-Length: +5\r\n\r\nhello")
            .as_bytes(),
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(
        !upstream.records().iter().any(|r| r["path"] == "/smuggle"),
        "reached the upstream"
    );
    // ... and, like any request, it has its access line (written within
    // 50 ms), with no upstream and outcome "rejected".
    assert!(
        wait_until(Duration::from_secs(5), || engine.log_text().lines().any(
            |l| {
                l.contains("path=/smuggle")
                    && l.contains("status=400")
                    && l.contains("outcome=\"rejected\"")
                    && l.contains("upstream=\"-\"")
                    && l.contains("error=\"invalid Content-Length\"")
            }
        )),
        "no access line for the refused request:\n{}",
        engine.log_text()
    );
    let metrics = engine.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("continuity_http_requests_total{")
                && l.contains("outcome=\"rejected\"")
                && l.contains("class=\"4xx\"")
                && l.ends_with(" 1")),
        "refused request not counted:\n{metrics}"
    );
    // A chunked request body (handed to pingora) on a keep-alive connection
    // that the lean path served first.
    let mut s = TcpStream::connect(&listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(s.try_clone().expect("clone"));
    s.write_all(format!("GET /first HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
        .expect("write");
    let first = http_client::read_response(&mut reader).expect("first");
    assert_eq!(first.status, 200);
    s.write_all(
        format!("POST /chunky HTTP/1.1\r\nHost: {listen}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_bytes(),
    )
    .expect("write chunked");
    let second = http_client::read_response(&mut reader).expect("second");
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.json()["body"], "hello world");
    // The connection is pingora's now, and still serves.
    s.write_all(format!("GET /third HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
        .expect("write");
    let third = http_client::read_response(&mut reader).expect("third");
    assert_eq!(third.json()["path"], "/third");
}

#[test]
fn upstream_connections_outlive_client_connections() {
    let (_upstream, _engine, listen) = start();
    // Twelve client connections one after another (Connection: close): each
    // gateway thread keeps its upstream connection for the next client.
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..12 {
        let r = http_client::get(&listen, &format!("/seq/{i}")).expect("GET");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        ports.insert(r.json()["peer_port"].to_string());
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert!(
        ports.len() <= threads.min(11),
        "{} upstream connections for 12 sequential clients ({threads} threads): {ports:?}",
        ports.len()
    );
}

#[test]
fn a_client_trickling_its_request_loses_the_connection() {
    let (_upstream, _engine, listen) = start();
    // A byte every 2 s: each read makes progress, but the whole head does
    // not arrive within 30 s of its first byte, so the gateway closes.
    let mut s = TcpStream::connect(&listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let started = std::time::Instant::now();
    s.write_all(b"GET /slowloris HTTP/1.1\r\nX-Pad: ")
        .expect("write");
    let closed_after = loop {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(_) => panic!("an answer to an incomplete head"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break started.elapsed(),
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "still open after 45 s of trickling"
        );
        if s.write_all(b"a").is_err() {
            break started.elapsed();
        }
    };
    assert!(
        closed_after >= Duration::from_secs(25),
        "closed too early: {closed_after:?}"
    );
}

#[test]
fn an_answer_cut_short_is_one_piece_of_evidence_per_request() {
    let (_upstream, engine, listen) = start();
    let passive = || {
        engine
            .metrics()
            .lines()
            .filter(|l| l.starts_with("continuity_passive_failures_total{") && l.contains("rms-a"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(passive(), 0.0);
    // A 503 whose body the upstream then cuts short: the 503 is evidence,
    // the cut is the same request failing, not a second failure. A POST is
    // not repeated, so the client gets 502 from here.
    let r = http_client::request(&listen, "POST", "/cut/503", &[], "{}").expect("POST");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(passive(), 1.0, "one request, one failure");
    // A 200 cut short: one failure too.
    let r = http_client::request(&listen, "POST", "/cut/200", &[], "{}").expect("POST");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(passive(), 2.0);
}

/// The `continuity_http_requests_total` sample of `outcome` and `class`.
fn requests(engine: &Continuity, outcome: &str, class: &str) -> f64 {
    engine
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("continuity_http_requests_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
                && l.contains(&format!("class=\"{class}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn access_log_errors_keeps_only_what_did_not_go_normally_and_off_keeps_nothing() {
    let (_upstream, engine, listen) = start_with("access_log = \"errors\"");
    for path in ["/quiet", "/status/404"] {
        http_client::request(&listen, "GET", path, &[], "").expect("GET");
    }
    let cut = http_client::request(&listen, "POST", "/cut/200", &[], "{}").expect("POST");
    assert_eq!(cut.status, 502, "{cut:?}");
    assert!(
        wait_until(Duration::from_secs(5), || engine
            .log_text()
            .contains("path=/cut/200")),
        "the failed request has no access line:\n{}",
        engine.log_text()
    );
    let log = engine.log_text();
    assert!(
        !log.contains("path=/quiet") && !log.contains("path=/status/404"),
        "normal requests were logged:\n{log}"
    );
    // Counted all the same.
    assert_eq!(requests(&engine, "proxied", "2xx"), 1.0);
    assert_eq!(requests(&engine, "proxied", "4xx"), 1.0);
    assert_eq!(requests(&engine, "failed", "5xx"), 1.0);
    drop(engine);

    let (_upstream, engine, listen) = start_with("access_log = \"off\"");
    http_client::request(&listen, "GET", "/silent", &[], "").expect("GET");
    let cut = http_client::request(&listen, "POST", "/cut/200", &[], "{}").expect("POST");
    assert_eq!(cut.status, 502, "{cut:?}");
    // Lines are written within 50 ms; give them ten times that.
    std::thread::sleep(Duration::from_millis(500));
    let log = engine.log_text();
    assert!(!log.contains("continuity::access"), "{log}");
    assert_eq!(requests(&engine, "proxied", "2xx"), 1.0);
    assert_eq!(requests(&engine, "failed", "5xx"), 1.0);
}

#[test]
fn a_connection_handed_over_in_an_outage_goes_back_to_the_lean_path() {
    let (upstream, engine, listen) = start();
    let status = || {
        let (_, body) = engine.get("/api/ops/health/service/rms");
        body["status"].as_str().unwrap_or("").to_string()
    };
    let mut s = TcpStream::connect(&listen).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = std::io::BufReader::new(s.try_clone().expect("clone"));
    let get = |s: &mut TcpStream, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
            .expect("write");
    };
    get(&mut s, "/before");
    let r = http_client::read_response(&mut reader).expect("before");
    assert_eq!((r.status, r.header("connection")), (200, None), "{r:?}");

    // No usable upstream: the next request is held (on_outage = "hold"),
    // by pingora, and answered once the upstream is back.
    upstream.set_healthy(false);
    assert!(
        wait_until(Duration::from_secs(10), || status() != "healthy"),
        "never unhealthy"
    );
    get(&mut s, "/held");
    std::thread::sleep(Duration::from_millis(300));
    upstream.set_healthy(true);
    let r = http_client::read_response(&mut reader).expect("held");
    assert_eq!(r.status, 200, "{r:?}");
    // The lean path could take this connection again: pingora closes it
    // after this answer, and the client reconnects to the lean path.
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    let mut rest = Vec::new();
    assert_eq!(reader.read_to_end(&mut rest).expect("eof"), 0, "not closed");

    // A new connection keeps alive again.
    let mut a = KeepAlive::connect(&listen).expect("reconnect");
    for p in ["/after1", "/after2"] {
        let r = a.get(p).expect(p);
        assert_eq!((r.status, r.header("connection")), (200, None), "{r:?}");
    }
}
