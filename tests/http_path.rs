//! Issue 12 item 8: a gateway client may not leave the upstream's base
//! path. With the upstream configured as `http://127.0.0.1:PORT/api`, a
//! request path with a `.` or `..` segment, however it is spelled (`..`,
//! `%2e%2e`, `%2E%2e`, `.%2e`, with `%2f` or `\` as the separator, `..;`),
//! is refused with 400 before anything goes upstream, on the lean HTTP/1
//! path and on the pingora path alike, and the refusal has its access line
//! and its request count like any other refused request. The real binary
//! and a real upstream (scripts/http_upstream.py), which records every
//! non-GET request with the path it saw.

mod support;

use std::time::Duration;

use support::continuity::Continuity;
use support::http_client::{self, Resp};
use support::http_upstream::{HttpUpstream, TestPki};
use support::*;

const HEALTH: &str =
    "check_interval_seconds = 0.2\nfailure_threshold = 2\nconnect_timeout_ms = 300\ntimeout_ms = 500";

/// Every spelling of a way out of `/api` that a client might send.
const ESCAPES: &[&str] = &[
    "/../admin",
    "/%2e%2e/admin",
    "/%2E%2e/admin",
    "/.%2e/admin",
    "/%2e./admin",
    "/a/../../admin",
    "/a/%2e%2e/%2e%2e/admin",
    "/a%2f..%2f..%2fadmin",
    "/a%2F%2e%2e%2F%2E%2E%2Fadmin",
    "/..;/admin",
    "/a/..",
    "/./admin",
    "/%252e%252e/admin",
    "/../admin?x=1",
];

/// Paths that only look like dot segments: they go through.
const FINE: &[&str] = &[
    "/ok",
    "/a..b/c",
    "/...",
    "/.well-known/x",
    "/files/..hidden",
    "/q?next=/../x",
];

struct Setup {
    upstream: HttpUpstream,
    engine: Continuity,
    /// The plain listener: the lean HTTP/1 path, and h2c (pingora).
    plain: String,
    /// The TLS listener: pingora only.
    tls_port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(dir.path());
    let upstream = HttpUpstream::start("path-a", None, None, false);
    let plain = format!("127.0.0.1:{}", free_port());
    let tls_port = free_port();
    let svc = |name: &str, listen: &str, extra: &str| {
        format!(
            "name = \"{name}\"\nkind = \"http\"\nlisten = \"{listen}\"\nhealth_path = \"/health\"\n{extra}\nupstreams = [\n  {{ name = \"{name}-a\", url = \"{}/api\", role = \"primary\" }},\n]",
            upstream.url()
        )
    };
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&svc("rms", &plain, ""))
        .service(&svc(
            "rms-tls",
            &format!("127.0.0.1:{tls_port}"),
            &format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"",
                pki.server_cert.display(),
                pki.server_key.display()
            ),
        ))
        .start();
    for name in ["rms", "rms-tls"] {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let (_, body) = engine.get(&format!("/api/ops/health/service/{name}"));
                body["status"] == "healthy"
            }),
            "{name} never healthy:\n{}",
            engine.log_text()
        );
    }
    Setup {
        upstream,
        engine,
        plain,
        tls_port,
        ca: pki.ca.clone(),
        _dir: dir,
    }
}

/// One request with curl, the path sent as it is: (status, body).
fn curl(args: &[&str], method: &str, url: &str) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--max-time", "30", "-X", method])
        .args(args)
        .args(["-w", "\n%{http_code}"]);
    if method == "POST" {
        cmd.args(["--data-binary", "body"]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or(0);
    if status == 0 {
        // No answer: the body says why (curl's error).
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        return (0, format!("no answer: {err}"));
    }
    (status, body.to_string())
}

/// The ways to reach pingora: h2c on the plain listener, and HTTP/1.1 and
/// HTTP/2 over TLS.
fn via_pingora(s: &Setup, method: &str, path: &str) -> Vec<(&'static str, u16, String)> {
    let ca = s.ca.display().to_string();
    let tls = format!("https://localhost:{}{path}", s.tls_port);
    vec![
        {
            let (st, b) = curl(
                &["--http2-prior-knowledge"],
                method,
                &format!("http://{}{path}", s.plain),
            );
            ("h2c", st, b)
        },
        {
            let (st, b) = curl(&["--http1.1", "--cacert", &ca], method, &tls);
            ("https h1", st, b)
        },
        {
            let (st, b) = curl(&["--http2", "--cacert", &ca], method, &tls);
            ("https h2", st, b)
        },
    ]
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// `GET`: the upstream answers with an echo of the path it saw.
fn lean_get(addr: &str, path: &str) -> Resp {
    http_client::get(addr, path).expect("GET")
}

fn lean_post(addr: &str, path: &str) -> Resp {
    http_client::request(addr, "POST", path, &[], "body").expect("POST")
}

fn rejected_count(engine: &Continuity) -> f64 {
    engine
        .metrics()
        .lines()
        .filter(|l| {
            l.starts_with("continuity_http_requests_total{")
                && l.contains("outcome=\"rejected\"")
                && l.contains("class=\"4xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn dot_segments_never_leave_the_base_path() {
    let s = start();
    let (engine, listen) = (&s.engine, s.plain.as_str());

    // What goes through lands under /api, on every path.
    for path in FINE {
        let r = lean_get(listen, path);
        assert_eq!(r.status, 200, "lean GET {path}: {r:?}");
        assert_eq!(r.json()["path"], format!("/api{path}"), "lean GET {path}");
        for (how, status, body) in via_pingora(&s, "GET", path) {
            assert_eq!(status, 200, "{how} GET {path}: {body}");
            assert_eq!(
                json(&body)["path"],
                format!("/api{path}"),
                "{how} GET {path}"
            );
        }
    }

    let mut sent = 0;
    for path in ESCAPES {
        for method in ["GET", "POST"] {
            for (how, status, body) in via_pingora(&s, method, path) {
                assert_eq!(
                    status, 400,
                    "{how} {method} {path} was not refused (upstream saw {body})"
                );
                assert_eq!(json(&body)["error"]["code"], "bad_request", "{how}: {body}");
                sent += 1;
            }
        }
        let r = lean_get(listen, path);
        assert_eq!(
            r.status, 400,
            "lean GET {path} was not refused (upstream saw {:?})",
            r.body
        );
        assert_eq!(r.json()["error"]["code"], "bad_request", "{r:?}");
        let r = lean_post(listen, path);
        assert_eq!(r.status, 400, "lean POST {path}: {r:?}");
        sent += 2;
    }

    // The upstream saw none of them: it records every non-GET request.
    let seen: Vec<String> = s
        .upstream
        .records()
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect();
    assert!(seen.is_empty(), "the upstream saw {seen:?}");

    // Each refusal has its access line and its count, like any refused
    // request.
    assert!(
        wait_until(Duration::from_secs(10), || rejected_count(engine)
            >= f64::from(sent)),
        "refused requests not counted ({} of {sent}):\n{}",
        rejected_count(engine),
        engine.metrics()
    );
    for service in ["rms", "rms-tls"] {
        assert!(
            wait_until(Duration::from_secs(10), || {
                engine.log_text().lines().any(|l| {
                    l.contains(&format!("service=\"{service}\""))
                        && l.contains("path=/../admin")
                        && l.contains("status=400")
                        && l.contains("outcome=\"rejected\"")
                        && l.contains("upstream=\"-\"")
                })
            }),
            "no access line for a request refused by {service}:\n{}",
            engine.log_text()
        );
    }

    // The gateway goes on serving.
    let r = lean_get(listen, "/after");
    assert_eq!(
        (r.status, r.json()["path"].clone()),
        (200, "/api/after".into())
    );
}
