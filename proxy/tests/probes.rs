//! Protocol probes and promotion against real servers started here:
//! redis-server, PostgreSQL 15 (primary + streaming standby) and tiny
//! in-test Bolt handshake servers. Every process is killed by a Drop guard.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use continuity_proxy::config::{Kind, Role, ServiceConfig, UpstreamConfig};
use continuity_proxy::health::{self, postgres, redis, FailureKind, ObservedRole, ProbeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn upstream(port: u16) -> UpstreamConfig {
    UpstreamConfig::at("u", &format!("127.0.0.1:{port}"), Role::Primary)
}

fn service(kind: Kind, up: &UpstreamConfig) -> ServiceConfig {
    let mut s = ServiceConfig::new("svc", kind, vec![up.clone()]);
    s.health.timeout = Duration::from_secs(10);
    s.health.connect_timeout = Duration::from_secs(5);
    s
}

async fn probe(kind: Kind, up: &UpstreamConfig) -> health::ProbeOutcome {
    health::run_probe(&service(kind, up), up).await
}

/// Probes until `want` (ok with that role) or panics after `secs`.
async fn wait_role(kind: Kind, up: &UpstreamConfig, want: ObservedRole, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = probe(kind, up).await;
        if out.ok && out.role == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {want:?}: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- redis

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(port: u16, dir: &Path, extra: &[&str]) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

#[tokio::test]
async fn redis_roles_promote_and_replicate_from() {
    let tmp = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let (d1, d2) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let _primary = start_redis(p1, &d1, &[]);
    let _replica = start_redis(p2, &d2, &["--replicaof", "127.0.0.1", &p1.to_string()]);
    let (u1, u2) = (upstream(p1), upstream(p2));

    wait_role(Kind::Redis, &u1, ObservedRole::Primary, 10).await;
    wait_role(Kind::Redis, &u2, ObservedRole::Replica, 10).await;

    let svc = service(Kind::Redis, &u2);
    let role = redis::command(&svc, &u2, &["ROLE"]).await.unwrap();
    let role = role.to_strings();
    assert_eq!(role.first().map(String::as_str), Some("slave"));
    assert_eq!(
        role.get(2).map(String::as_str),
        Some(p1.to_string().as_str())
    );
    let err = redis::command(&svc, &u2, &["NOSUCHCOMMAND"])
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Protocol(_)), "{err:?}");

    health::promote(&svc, &u2).await.unwrap();
    let out = probe(Kind::Redis, &u2).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.role, Some(ObservedRole::Primary));

    redis::replicate_from(&svc, &u2, "127.0.0.1", p1)
        .await
        .unwrap();
    wait_role(Kind::Redis, &u2, ObservedRole::Replica, 10).await;
}

#[tokio::test]
async fn redis_requirepass() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _r = start_redis(port, tmp.path(), &["--requirepass", "s3cret"]);
    let mut good = upstream(port);
    good.password = Some("s3cret".into());
    wait_role(Kind::Redis, &good, ObservedRole::Primary, 10).await;

    let mut with_user = good.clone();
    with_user.user = Some("default".into());
    let out = probe(Kind::Redis, &with_user).await;
    assert!(out.ok, "{out:?}");

    let out = probe(Kind::Redis, &upstream(port)).await;
    assert!(!out.ok);
    assert_eq!(out.failure, Some(FailureKind::Auth), "{out:?}");

    let mut wrong = good.clone();
    wrong.password = Some("nope".into());
    let out = probe(Kind::Redis, &wrong).await;
    assert_eq!(out.failure, Some(FailureKind::Auth), "{out:?}");
}

#[tokio::test]
async fn closed_port_is_refused() {
    let port = free_port();
    for kind in [Kind::Redis, Kind::Postgres, Kind::Neo4j] {
        let out = probe(kind, &upstream(port)).await;
        assert!(!out.ok);
        assert_eq!(out.failure, Some(FailureKind::Refused), "{kind}: {out:?}");
    }
}

// ---------------------------------------------------------------- bolt

/// A one-shot-per-connection Bolt handshake server answering `answer`.
async fn bolt_server(answer: [u8; 4]) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 20];
                if s.read_exact(&mut req).await.is_ok()
                    && req[..4] == health::bolt::MAGIC
                    && req[4..8] == [0, 4, 4, 5]
                {
                    let _ = s.write_all(&answer).await;
                }
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn bolt_handshake_ok() {
    let port = bolt_server([0, 0, 4, 5]).await;
    let out = probe(Kind::Neo4j, &upstream(port)).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.role, None);
    assert_eq!(health::bolt::negotiated_version([0, 0, 4, 5]), Some((5, 4)));
}

#[tokio::test]
async fn bolt_no_common_version() {
    let port = bolt_server([0, 0, 0, 0]).await;
    let out = probe(Kind::Neo4j, &upstream(port)).await;
    assert!(!out.ok);
    assert_eq!(out.failure, Some(FailureKind::Protocol));
    assert!(out.error.unwrap().contains("no common Bolt version"));
}

// ---------------------------------------------------------------- postgres

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a PostgreSQL binary as the `postgres` user; panics with its output on failure.
fn pg(cwd: &Path, bin: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/{bin}"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops every started cluster (immediate mode) before the tempdir goes.
struct PgGuard {
    started: Vec<PathBuf>,
    tmp: tempfile::TempDir,
}

impl PgGuard {
    fn new() -> PgGuard {
        let tmp = tempfile::tempdir().unwrap();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        std::os::unix::fs::chown(tmp.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        PgGuard {
            started: Vec::new(),
            tmp,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn start(&mut self, name: &str, port: u16) {
        let data = self.dir(name);
        let log = self.dir(&format!("{name}.log"));
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            data.display()
        );
        self.started.push(data.clone());
        let (data, log) = (data.display().to_string(), log.display().to_string());
        pg(
            self.tmp.path(),
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        );
    }
}

impl Drop for PgGuard {
    fn drop(&mut self) {
        for data in &self.started {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(data)
                .args(["stop", "-m", "immediate"])
                .current_dir(self.tmp.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn pg_user(port: u16, user: &str, password: Option<&str>) -> UpstreamConfig {
    let mut u = upstream(port);
    u.user = Some(user.into());
    u.database = Some("postgres".into());
    u.password = password.map(str::to_string);
    u
}

const HBA: &str = "\
local all all trust
host replication all 127.0.0.1/32 trust
host all md5user 127.0.0.1/32 md5
host all scramuser 127.0.0.1/32 scram-sha-256
host all plainuser 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
";

#[tokio::test]
async fn postgres_auth_roles_and_promote() {
    let mut g = PgGuard::new();
    let (p1, p2) = (free_port(), free_port());
    let primary = g.dir("primary").display().to_string();
    pg(
        g.tmp.path(),
        "initdb",
        &["-D", &primary, "--auth=trust", "-U", "postgres"],
    );
    g.start("primary", p1);

    // Trust: the default user `postgres`, database = user.
    let trust = upstream(p1);
    let out = probe(Kind::Postgres, &trust).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.role, Some(ObservedRole::Primary));

    let svc = service(Kind::Postgres, &trust);
    let rows = postgres::simple_query(&svc, &trust, "SELECT 1, NULL::text, 'a'")
        .await
        .unwrap();
    assert_eq!(rows, vec![vec![Some("1".into()), None, Some("a".into())]]);
    postgres::simple_query(
        &svc,
        &trust,
        "SET password_encryption='md5'; CREATE ROLE md5user LOGIN PASSWORD 'pw1'; \
         CREATE ROLE plainuser LOGIN PASSWORD 'pw3'; \
         SET password_encryption='scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD 'pw2'",
    )
    .await
    .unwrap();
    std::fs::write(g.dir("primary").join("pg_hba.conf"), HBA).unwrap();
    postgres::simple_query(&svc, &trust, "SELECT pg_reload_conf()")
        .await
        .unwrap();

    // Wait for the reload: md5user without a password is refused locally.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = probe(Kind::Postgres, &pg_user(p1, "md5user", None)).await;
        if out.failure == Some(FailureKind::Auth) {
            assert!(out.error.unwrap().contains("password_env not set"));
            break;
        }
        assert!(Instant::now() < deadline, "hba never reloaded: {out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for (user, pw) in [
        ("md5user", "pw1"),
        ("scramuser", "pw2"),
        ("plainuser", "pw3"),
    ] {
        let out = probe(Kind::Postgres, &pg_user(p1, user, Some(pw))).await;
        assert!(out.ok, "{user}: {out:?}");
        assert_eq!(out.role, Some(ObservedRole::Primary));
        let out = probe(Kind::Postgres, &pg_user(p1, user, Some("wrong"))).await;
        assert_eq!(out.failure, Some(FailureKind::Auth), "{user}: {out:?}");
        assert!(out.error.unwrap().contains("28P01"));
    }
    let out = probe(Kind::Postgres, &pg_user(p1, "scramuser", None)).await;
    assert_eq!(out.failure, Some(FailureKind::Auth), "{out:?}");

    // A missing database is a protocol error carrying its SQLSTATE.
    let mut nodb = pg_user(p1, "postgres", None);
    nodb.database = Some("nope".into());
    let out = probe(Kind::Postgres, &nodb).await;
    assert_eq!(out.failure, Some(FailureKind::Protocol), "{out:?}");
    assert!(out.error.unwrap().contains("3D000"));

    // A streaming standby: Replica, then promoted to Primary.
    let standby = g.dir("standby").display().to_string();
    let port = p1.to_string();
    pg(
        g.tmp.path(),
        "pg_basebackup",
        &[
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            &standby,
        ],
    );
    g.start("standby", p2);
    let su = pg_user(p2, "scramuser", Some("pw2"));
    wait_role(Kind::Postgres, &su, ObservedRole::Replica, 30).await;
    // pg_promote() needs a superuser (or an explicit GRANT).
    let admin = pg_user(p2, "postgres", None);
    let ssvc = service(Kind::Postgres, &admin);
    let err = health::promote(&ssvc, &su).await.unwrap_err();
    assert!(err.to_string().contains("42501"), "{err}");
    health::promote(&ssvc, &admin).await.unwrap();
    let out = probe(Kind::Postgres, &su).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.role, Some(ObservedRole::Primary));
    // Promoting a primary is a no-op.
    health::promote(&ssvc, &admin).await.unwrap();
}
