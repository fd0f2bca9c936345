//! The control plane over HTTPS through the real binary: a client that
//! trusts the test CA gets in (the `healthcheck` command with `--ca`), one
//! that does not is refused, and an unusable key stops the process (64).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::continuity::Continuity;
use support::*;

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

fn ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "continuity e2e CA");
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn pki() -> Pki {
    let (ca_cert, issuer) = ca();
    let (other_ca, _) = ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("other-ca.pem"), other_ca.pem()).unwrap();
    std::fs::write(p("control.pem"), cert.pem()).unwrap();
    std::fs::write(p("control.key"), key.serialize_pem()).unwrap();
    std::fs::write(
        p("other.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    Pki {
        ca: p("ca.pem"),
        other_ca: p("other-ca.pem"),
        cert: p("control.pem"),
        key: p("control.key"),
        other_key: p("other.key"),
        _dir: dir,
    }
}

fn healthcheck(url: &str, ca: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args(["healthcheck", "--url", url, "--ca"])
        .arg(ca)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn https_control_plane_trusts_only_its_ca() {
    let pki = pki();
    let mut engine = Continuity::builder()
        .control(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            pki.cert.display(),
            pki.key.display()
        ))
        .prepare();
    engine.spawn_no_wait();
    let url = format!("https://{}", engine.control);
    let up = wait_until(Duration::from_secs(20), || healthcheck(&url, &pki.ca).0);
    assert!(
        up,
        "{}\n{}",
        healthcheck(&url, &pki.ca).1,
        engine.log_text()
    );
    // Also by name.
    let port = engine.control.rsplit(':').next().unwrap().to_string();
    assert!(healthcheck(&format!("https://localhost:{port}"), &pki.ca).0);
    // A client that trusts another CA is refused.
    let (ok, out) = healthcheck(&url, &pki.other_ca);
    assert!(!ok, "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    // Plain HTTP to the HTTPS port gets no answer.
    assert!(engine
        .try_request("GET", "/api/ops/health", None, None)
        .map(|(code, _)| code != 200)
        .unwrap_or(true));
    assert!(engine.is_running());
    // INFO lines reach the log in batches, within 50 ms (src/logging.rs).
    assert!(
        wait_until(Duration::from_secs(5), || engine
            .log_text()
            .contains("https")),
        "{}",
        engine.log_text()
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_exits_64() {
    let pki = pki();
    let engine = Continuity::builder()
        .control(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            pki.cert.display(),
            pki.other_key.display()
        ))
        .prepare();
    let out = Command::new(env!("CARGO_BIN_EXE_continuity"))
        .arg("run")
        .arg("--config")
        .arg(engine.config_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
}
