//! `continuity check`, `token new` and `healthcheck` through the real binary.
//! The broken configs in `tests/configs/bad/` say what they expect in
//! `# expect: KEY.PATH line N` comments (`<syntax>` for a TOML syntax error).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn continuity(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_continuity"))
        .args(args)
        .env_remove("CONTINUITY_CONFIG")
        .env_remove("CONTINUITY_TEST_SURELY_UNSET_PASSWORD")
        .env_remove("OPS_HEALTH_CHECK_INTERVAL")
        .env_remove("OPS_FAILOVER_THRESHOLD")
        .env_remove("OPS_REDUNDANCY_MODE")
        .env_remove("OPS_ALERT_WEBHOOK_URL")
        .env_remove("NEO4J_SECONDARY_URI")
        .env_remove("REDIS_SECONDARY_URL")
        .output()
        .expect("run the continuity binary")
}

fn check(path: &Path) -> (i32, String, String) {
    let out = continuity(&["check", "--config", &path.to_string_lossy()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn expectations(path: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .filter_map(|e| e.rsplit_once(" line "))
        .map(|(key, line)| (key.to_string(), line.trim().parse().expect("line number")))
        .collect()
}

#[test]
fn check_accepts_the_reference_config_and_the_examples() {
    let mut files = vec![repo().join("config/continuity.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("config/examples"))
        .expect("config/examples")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2);
    files.extend(examples);
    for file in files {
        let (code, stdout, stderr) = check(&file);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
        assert_eq!(stdout.trim(), "ok", "{}", file.display());
    }
}

#[test]
fn check_refuses_every_bad_fixture_with_exit_64_naming_the_key() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/configs/bad"))
        .expect("tests/configs/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 12);
    for file in files {
        let (code, stdout, stderr) = check(&file);
        assert_eq!(code, 64, "{}: {stdout}{stderr}", file.display());
        assert!(!stdout.contains("ok"), "{}: {stdout}", file.display());
        assert!(!stderr.contains("panicked"), "{}: {stderr}", file.display());
        let expected = expectations(&file);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        for (key, line) in expected {
            let want = if key == "<syntax>" {
                format!(":{line}: TOML syntax error at line {line}, column")
            } else {
                format!(":{line}: {key}: ")
            };
            assert!(
                stderr.contains(&want),
                "{}: wanted `{want}` in:\n{stderr}",
                file.display()
            );
        }
    }
}

#[test]
fn check_of_a_missing_file_exits_64() {
    let (code, _, stderr) = check(Path::new("/nonexistent/continuity.toml"));
    assert_eq!(code, 64);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn token_new_prints_a_token_and_its_sha256_line() {
    let out = continuity(&["token", "new"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let digest = hex::encode(Sha256::digest(lines[0].as_bytes()));
    assert_eq!(lines[1], format!("sha256 = \"{digest}\""));
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let out = continuity(&["healthcheck", "--url", &format!("http://{addr}")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}
