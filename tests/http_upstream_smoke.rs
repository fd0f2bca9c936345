//! The HTTP upstream of the harness (`scripts/http_upstream.py`) behaves as
//! the gateway tests expect: plain HTTP with keep-alive, HTTPS, mTLS, the
//! special routes, the records file, the health flag, kill and restart.
//! Plain HTTP is checked over a raw `TcpStream`; HTTPS with `curl` when it
//! is installed, else with python3's `ssl`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::http_upstream::{HttpUpstream, TestPki};
use support::*;

/// One HTTP/1.1 response read from a keep-alive connection:
/// (status, lowercased headers, body).
type Response = (u16, Vec<(String, String)>, String);

fn read_response(r: &mut BufReader<TcpStream>) -> Response {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
    resp.1
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A keep-alive client on one connection.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn(BufReader::new(s))
    }

    fn send(&mut self, raw: &str) -> Response {
        self.0.get_mut().write_all(raw.as_bytes()).expect("write");
        read_response(&mut self.0)
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"))
    }
}

fn json(resp: &Response) -> serde_json::Value {
    serde_json::from_str(&resp.2).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", resp.2))
}

fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// GET over HTTPS trusting `ca`, optionally with a client certificate:
/// Ok((status, body)) or Err(client error text).
fn https_get(
    url: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<(u16, String), String> {
    let out = if have_curl() {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(ca);
        if let Some((cert, key)) = client {
            c.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        c.arg(url).output().expect("run curl")
    } else {
        let script = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    r = urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10)
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(body.decode() + "\n" + str(code))
"#;
        let mut c = Command::new("python3");
        c.args(["-c", script, url]).arg(ca);
        if let Some((cert, key)) = client {
            c.arg(cert).arg(key);
        }
        c.output().expect("run python3")
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let (body, code) = text.rsplit_once('\n').ok_or_else(|| text.clone())?;
    Ok((
        code.trim().parse().map_err(|_| text.clone())?,
        body.to_string(),
    ))
}

#[test]
fn plain_upstream_routes_records_health_kill_restart() {
    let port = free_port();
    let mut web = HttpUpstream::start("web-a", Some(port), None, false);
    assert_eq!(web.port(), port);
    assert_eq!(web.url(), format!("http://127.0.0.1:{port}"));

    // Several requests on one keep-alive connection.
    let mut c = Conn::open(&web.addr());
    let r = c.get("/health");
    assert_eq!((r.0, r.2.as_str()), (200, "ok"));

    let r = c.get("/echo/x?a=1&b=2");
    assert_eq!(r.0, 200);
    let v = json(&r);
    assert_eq!(v["server"], "web-a");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/x?a=1&b=2");
    assert_eq!(v["headers"]["host"], "t");

    let body = r#"{"amount": 3}"#;
    let r = c.send(&format!(
        "POST /submissions/1 HTTP/1.1\r\nHost: t\r\nIdempotency-Key: key-1\r\nX-Trace: abc\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let v = json(&r);
    assert_eq!(
        (r.0, v["method"].as_str(), v["body"].as_str()),
        (200, Some("POST"), Some(body))
    );
    assert_eq!(v["headers"]["x-trace"], "abc");

    // Chunked request body.
    let r = c.send(
        "PUT /things/7 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(json(&r)["body"], "hello world");

    for code in [500u16, 502, 503, 504, 404] {
        let r = c.get(&format!("/status/{code}"));
        assert_eq!(r.0, code);
        assert_eq!(json(&r)["server"], "web-a");
    }

    let r = c.get("/ratelimit/2");
    assert_eq!((r.0, header(&r, "retry-after")), (429, Some("1")));
    assert_eq!(c.get("/ratelimit/2").0, 429);
    assert_eq!(c.get("/ratelimit/2").0, 200);

    let t = Instant::now();
    assert_eq!(c.get("/slow/200").0, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));

    let r = c.get("/big/100000");
    assert_eq!((r.0, r.2.len()), (200, 100_000));

    // Only non-GET requests (and /submissions) are recorded.
    let recs = web.records();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["method"], "POST");
    assert_eq!(recs[0]["path"], "/submissions/1");
    assert_eq!(recs[0]["idempotency_key"], "key-1");
    assert_eq!(recs[0]["body"], body);
    assert_eq!(recs[1]["method"], "PUT");
    assert!(recs[1]["idempotency_key"].is_null());
    assert_eq!(c.get("/submissions/list").0, 200);
    assert_eq!(web.records().len(), 3);

    // Health flips without a kill.
    web.set_healthy(false);
    assert_eq!(c.get("/health").0, 503);
    web.set_healthy(true);
    assert_eq!(c.get("/health").0, 200);

    // SIGKILL for real: the connection dies and the port refuses.
    let pid = web.pid().unwrap();
    web.kill();
    assert!(!pid_alive(pid));
    assert!(!port_is_open(&web.addr()));
    let mut buf = [0u8; 1];
    let dead =
        c.0.get_mut()
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_err()
            || matches!(c.0.read(&mut buf), Ok(0) | Err(_));
    assert!(dead, "the old connection still answers after SIGKILL");

    web.restart();
    assert_eq!(web.port(), port);
    assert_ne!(web.pid(), Some(pid));
    let mut c = Conn::open(&web.addr());
    assert_eq!(c.get("/health").0, 200);
    // Counters restart; records persist.
    assert_eq!(c.get("/ratelimit/1").0, 429);
    assert_eq!(web.records().len(), 3);
}

#[test]
fn tls_and_mtls_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());

    let tls = HttpUpstream::start("web-tls", None, Some(&pki), false);
    assert!(tls.url().starts_with("https://127.0.0.1:"));
    let (code, body) = https_get(&format!("{}/hello", tls.url()), &pki.ca, None).unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["server"].as_str(), v["path"].as_str()),
        (Some("web-tls"), Some("/hello"))
    );
    // The name in the certificate is valid too.
    let (code, _) = https_get(
        &format!("https://localhost:{}/health", tls.port()),
        &pki.ca,
        None,
    )
    .unwrap();
    assert_eq!(code, 200);
    let err = https_get(&format!("{}/health", tls.url()), &pki.other_ca, None).unwrap_err();
    assert!(!err.is_empty());

    let mtls = HttpUpstream::start("web-mtls", None, Some(&pki), true);
    let url = format!("{}/who", mtls.url());
    let (code, body) = https_get(&url, &pki.ca, Some((&pki.client_cert, &pki.client_key))).unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["client_cn"], "continuity-test-client");
    assert!(
        https_get(&url, &pki.ca, None).is_err(),
        "mTLS upstream answered a client without a certificate"
    );
    assert!(
        https_get(
            &url,
            &pki.ca,
            Some((&pki.other_client_cert, &pki.other_client_key))
        )
        .is_err(),
        "mTLS upstream accepted a certificate from another CA"
    );
    // The upstream keeps serving after refused handshakes.
    let (code, _) = https_get(
        &format!("{}/health", mtls.url()),
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .unwrap();
    assert_eq!(code, 200);
}
