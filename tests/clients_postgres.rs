//! Real PostgreSQL clients through the proxy (issue #18, item 1): psql
//! (the command-line client) and psycopg 3, in front of a real primary +
//! streaming standby with `on_failover = "promote"`.
//!
//! Normal traffic: COPY FROM STDIN and COPY TO STDOUT, LISTEN/NOTIFY across
//! two connections, a cancel request (psycopg `cancel_safe()` and
//! `cancel()`, psql on SIGINT), SSL negotiation (`sslmode=disable`,
//! `prefer`, and `require`: both servers get a self-signed certificate and
//! `ssl = on`, and the TLS session passes through the proxy, which relays
//! bytes), and the extended protocol (parameters, `prepare=True`, pipeline
//! mode).
//!
//! Then a kill -9 of the primary with connections open in every state
//! (idle without TLS, LISTENing, in a transaction, holding a prepared
//! statement, over TLS, a query in flight, an idle psql session without
//! TLS, a psql query in flight over TLS).
//! What each one saw is recorded and printed (docs/clients.md reports it);
//! those connections are closed by design (a session cannot be replayed on
//! another server), and the test asserts that new connections then do all
//! of the above on the promoted standby.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::continuity::Continuity;
use support::proc::signal_pid;
use support::python::{has_module, PyDriver};
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";

/// The psycopg side: one line `{"op": ...}` in, one JSON line out.
/// argv: host, port.
const SCRIPT: &str = r#"
import json, sys, threading, time, uuid
import psycopg

host, port = sys.argv[1], sys.argv[2]

def connect(sslmode="prefer", **kw):
    return psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                           sslmode=sslmode, connect_timeout=10, **kw)

def err(e):
    return "%s: %s" % (type(e).__name__, str(e).strip().replace("\n", " / "))

def ssl():
    out = {}
    for mode in ("disable", "prefer", "require"):
        try:
            with connect(mode) as c:
                server = c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]
                out[mode] = {"client_ssl": c.pgconn.ssl_in_use, "server_ssl": server}
        except Exception as e:
            out[mode] = {"error": err(e)}
    return out

def copy():
    with connect(autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS py_copy (id int, name text)")
        c.execute("TRUNCATE py_copy")
        cur = c.cursor()
        with cur.copy("COPY py_copy (id, name) FROM STDIN") as cp:
            for i in range(1000):
                cp.write_row((i, "row %d" % i))
        with cur.copy("COPY (SELECT id, name FROM py_copy ORDER BY id) TO STDOUT") as cp:
            rows = list(cp.rows())
        return {"rows": len(rows), "last": list(rows[-1])}

def listen_notify():
    with connect(autocommit=True) as a, connect(autocommit=True) as b:
        a.execute("LISTEN clients_ch")
        payload = uuid.uuid4().hex[:8]
        b.execute("SELECT pg_notify('clients_ch', %s)", (payload,))
        got = [n for n in a.notifies(timeout=5, stop_after=1)]
        if not got:
            raise RuntimeError("no notification within 5 s")
        n = got[0]
        if n.payload != payload or n.pid != b.info.backend_pid:
            raise AssertionError("got %r from pid %s" % (n, n.pid))
        return {"channel": n.channel, "from_second_connection": True}

def wait_active(marker):
    with connect(autocommit=True) as m:
        for _ in range(100):
            n = m.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                          "AND query LIKE %s AND pid <> pg_backend_pid()", ("%" + marker + "%",)).fetchone()[0]
            if n:
                return
            time.sleep(0.05)
    raise RuntimeError("the query %s never showed as active" % marker)

def sleeper(conn, marker, box):
    def run():
        try:
            conn.execute("SELECT pg_sleep(30) -- %s" % marker)
            box["value"] = "pg_sleep(30) completed"
        except Exception as e:
            box["error"] = err(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_active(marker)
    return t

def cancel():
    out = {}
    for how in ("cancel_safe", "cancel"):
        with connect(autocommit=True) as c:
            box = {}
            t = sleeper(c, "cancel-me-" + how, box)
            getattr(c, how)()
            t.join(10)
            if t.is_alive():
                raise RuntimeError("%s did not stop pg_sleep(30) within 10 s" % how)
            out[how] = box.get("error", box.get("value"))
            # The connection is usable after its query was cancelled.
            out[how + "_then"] = c.execute("SELECT 1").fetchone()[0]
    return out

def extended():
    with connect(autocommit=True) as c:
        r = c.execute("SELECT %s::int + %s::int, %s::text", (40, 2, "text param")).fetchone()
        b = c.cursor(binary=True).execute("SELECT %s::int8 * 2", (21,)).fetchone()[0]
        p = [c.execute("SELECT %s::int * 10", (i,), prepare=True).fetchone()[0] for i in range(3)]
        prepared = c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        c.execute("CREATE TABLE IF NOT EXISTS py_pipe (id int)")
        with c.pipeline():
            for i in range(20):
                c.execute("INSERT INTO py_pipe VALUES (%s)", (i,))
            cur = c.execute("SELECT count(*) FROM py_pipe")
        n = cur.fetchone()[0]
        return {"params": [r[0], r[1]], "binary": b, "prepared": p,
                "server_prepared_statements": prepared, "pipeline_rows": n}

armed = {}

def arm(ssl_ok):
    armed["idle"] = connect("disable", autocommit=True)
    armed["idle"].execute("SELECT 1")
    armed["listener"] = connect(autocommit=True)
    armed["listener"].execute("LISTEN clients_ch")
    armed["in_transaction"] = connect()
    armed["in_transaction"].execute("CREATE TABLE IF NOT EXISTS py_tx (id int)")
    armed["in_transaction"].commit()
    armed["in_transaction"].execute("INSERT INTO py_tx VALUES (1)")
    armed["prepared"] = connect(autocommit=True)
    armed["prepared"].execute("SELECT %s::int", (1,), prepare=True)
    armed["tls"] = connect("require" if ssl_ok else "prefer", autocommit=True)
    armed["tls"].execute("SELECT 1")
    c = connect(autocommit=True)
    box = {}
    armed["in_flight"] = (c, box, sleeper(c, "in-flight-at-kill", box))
    return sorted(armed)

def after():
    out = {}
    steps = {
        "idle": lambda c: c.execute("SELECT 1").fetchone()[0],
        "listener": lambda c: [n.payload for n in c.notifies(timeout=2)],
        "in_transaction": lambda c: (c.execute("INSERT INTO py_tx VALUES (2)"), c.commit()) and "committed",
        "prepared": lambda c: c.execute("SELECT %s::int", (2,), prepare=True).fetchone()[0],
        "tls": lambda c: c.execute("SELECT 1").fetchone()[0],
    }
    for name, step in steps.items():
        c = armed.pop(name)
        seen = []
        for _ in range(2):  # the first use, then a second one on the same object
            try:
                seen.append({"value": step(c)})
            except Exception as e:
                seen.append({"error": err(e)})
        out[name] = {"first": seen[0], "second": seen[1], "closed": c.closed, "broken": c.broken}
        c.close()
    c, box, t = armed.pop("in_flight")
    t.join(30)
    out["in_flight"] = {"first": box if not t.is_alive() else {"error": "still running after 30 s"},
                        "closed": c.closed, "broken": c.broken}
    c.close()
    return out

OPS = {"ssl": ssl, "copy": copy, "listen_notify": listen_notify, "cancel": cancel,
       "extended": extended, "after": after}

for line in sys.stdin:
    msg = json.loads(line)
    try:
        if msg["op"] == "arm":
            value = arm(msg["ssl"])
        else:
            value = OPS[msg["op"]]()
        out = {"ok": True, "value": value}
    except Exception as e:
        out = {"ok": False, "error": err(e)}
    print(json.dumps(out, default=str), flush=True)
"#;

/// A self-signed certificate in `dir` (server.crt, server.key).
fn make_cert(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.join("server.key"))
        .arg("-out")
        .arg(dir.join("server.crt"))
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies the certificate into `server`'s data dir and turns `ssl` on
/// (`ALTER SYSTEM` + `pg_reload_conf()`); true if the server then says so.
fn enable_ssl(server: &PgServer, cert_dir: &Path) -> bool {
    let data = server.data_dir();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(cert_dir.join(f), data.join(f)).expect("copy the certificate");
        let path = data.join(f);
        let _ = Command::new("chmod").arg("600").arg(&path).status();
        // The server runs as `postgres` when the tests run as root.
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&path)
            .stderr(Stdio::null())
            .status();
    }
    if let Err(e) = try_psql(server.port(), "ALTER SYSTEM SET ssl = on") {
        eprintln!("ALTER SYSTEM SET ssl = on on port {}: {e}", server.port());
        return false;
    }
    server.psql("SELECT pg_reload_conf()");
    wait_until(Duration::from_secs(5), || {
        try_psql(server.port(), "SHOW ssl").is_ok_and(|s| s == "on")
    })
}

/// psql through the proxy with a connection string; (exit code, stdout, stderr).
fn psql_run(conninfo: &str, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new("psql")
        .args(["-X", "-At", conninfo])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write psql's stdin");
    let out = child.wait_with_output().expect("psql exits");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        String::from_utf8_lossy(&out.stderr).trim_end().to_string(),
    )
}

/// psql's answer that must have worked.
fn psql_ok(conninfo: &str, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = psql_run(conninfo, args, stdin);
    assert_eq!(code, Some(0), "psql {args:?} failed: {err}\n{out}");
    out
}

/// Waits until a query containing `marker` runs on the server behind `port`.
fn wait_active(port: u16, marker: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
    );
    assert!(
        wait_until(Duration::from_secs(10), || try_psql(port, &sql)
            .is_ok_and(|n| n != "0")),
        "no active query {marker}"
    );
}

/// A psql process running `sql` (stdout/stderr piped), not waited for.
fn psql_spawn(conninfo: &str, sql: &str) -> Child {
    Command::new("psql")
        .args(["-X", "-At", conninfo, "-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs")
}

fn finish(child: Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().expect("psql exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text.trim_end().replace('\n', " / "))
}

/// Everything psql does in normal traffic, through the proxy at `proxy`.
fn psql_features(proxy: u16, ssl: bool, when: &str) {
    let base = format!("host=127.0.0.1 port={proxy} user=postgres dbname=postgres");
    // COPY FROM STDIN (psql's stdin) and COPY TO STDOUT.
    psql_ok(
        &base,
        &[
            "-c",
            "CREATE TABLE IF NOT EXISTS psql_copy (id int, name text)",
        ],
        "",
    );
    psql_ok(&base, &["-c", "TRUNCATE psql_copy"], "");
    let data: String = (1..=500).map(|i| format!("{i}\tname {i}\n")).collect();
    psql_ok(&base, &["-c", "COPY psql_copy FROM STDIN"], &data);
    let out = psql_ok(
        &base,
        &["-c", "COPY (SELECT * FROM psql_copy ORDER BY id) TO STDOUT"],
        "",
    );
    assert_eq!(out.lines().count(), 500, "{when}: psql COPY TO STDOUT");
    assert_eq!(out.lines().last(), Some("500\tname 500"));
    eprintln!("psql {when} COPY: 500 rows in, 500 rows out");

    // LISTEN, a NOTIFY from a second psql (run by `\!`), then the next
    // command shows the notification.
    let script = format!(
        "LISTEN psql_ch;\n\\! psql -X -q -h 127.0.0.1 -p {proxy} -U postgres -d postgres -c \"NOTIFY psql_ch, 'hello'\"\nSELECT 'after';\n"
    );
    let out = psql_ok(&base, &[], &script);
    assert!(
        out.contains("Asynchronous notification \"psql_ch\" with payload \"hello\" received"),
        "{when}: psql did not show the notification: {out}"
    );
    eprintln!("psql {when} LISTEN/NOTIFY: {}", out.replace('\n', " / "));

    // A cancel request: psql sends one on SIGINT.
    let marker = format!("psql-cancel-{when}");
    let child = psql_spawn(&base, &format!("SELECT pg_sleep(30) -- {marker}"));
    wait_active(proxy, &marker);
    assert!(signal_pid(child.id(), "INT"), "SIGINT to psql");
    let (code, text) = finish(child);
    assert!(
        text.contains("canceling statement due to user request"),
        "{when}: psql after SIGINT: {code:?} {text}"
    );
    eprintln!("psql {when} cancel (SIGINT): exit {code:?}: {text}");

    // SSL negotiation.
    let ssl_query = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let modes: &[&str] = if ssl {
        &["disable", "prefer", "require"]
    } else {
        &["disable", "prefer"]
    };
    for mode in modes {
        let out = psql_ok(&format!("{base} sslmode={mode}"), &["-c", ssl_query], "");
        let want = if *mode == "disable" || !ssl { "f" } else { "t" };
        assert_eq!(out, want, "{when}: psql sslmode={mode}");
        eprintln!("psql {when} sslmode={mode}: server sees ssl={out}");
    }
}

/// psycopg's normal-traffic features, asserted.
fn psycopg_features(py: &mut PyDriver, ssl: bool, when: &str) {
    let mut ask = |op: &str| -> Value {
        let r = py.ask(&json!({ "op": op }).to_string());
        assert_eq!(r["ok"], true, "psycopg {when} {op}: {r}");
        eprintln!("psycopg {when} {op}: {}", r["value"]);
        r["value"].clone()
    };
    let v = ask("ssl");
    assert_eq!(
        v["disable"],
        json!({"client_ssl": false, "server_ssl": false}),
        "{v}"
    );
    let on = json!({"client_ssl": ssl, "server_ssl": ssl});
    assert_eq!(v["prefer"], on, "{v}");
    if ssl {
        assert_eq!(v["require"], on, "{v}");
    } else {
        assert!(v["require"]["error"].is_string(), "{v}");
    }
    let v = ask("copy");
    assert_eq!(v, json!({"rows": 1000, "last": ["999", "row 999"]}));
    let v = ask("listen_notify");
    assert_eq!(v["from_second_connection"], true, "{v}");
    let v = ask("cancel");
    for how in ["cancel_safe", "cancel"] {
        assert!(
            v[how]
                .as_str()
                .is_some_and(|e| e.starts_with("QueryCanceled")
                    && e.contains("canceling statement due to user request")),
            "{how}: {v}"
        );
        assert_eq!(v[format!("{how}_then")], 1, "{v}");
    }
    let v = ask("extended");
    assert_eq!(v["params"], json!([42, "text param"]), "{v}");
    assert_eq!(v["binary"], 42, "{v}");
    assert_eq!(v["prepared"], json!([0, 10, 20]), "{v}");
    assert!(v["server_prepared_statements"].as_i64() >= Some(1), "{v}");
    assert!(v["pipeline_rows"].as_i64() >= Some(20), "{v}");
}

#[test]
fn psql_and_psycopg_through_the_proxy_and_a_kill_9() {
    if !has_module("psycopg") {
        assert!(
            !ArcadeDb::in_ci(),
            "python3 cannot import psycopg, and CI must not skip"
        );
        eprintln!(
            "SKIPPED: python3 cannot import psycopg (`python3 -m pip install psycopg[binary]`)"
        );
        return;
    }
    let mut pair = PgPair::start();
    let certs = tempfile::tempdir().expect("tempdir");
    make_cert(certs.path());
    let ssl = enable_ssl(&pair.primary, certs.path()) && enable_ssl(&pair.standby, certs.path());
    eprintln!("ssl = on on both servers: {ssl}");
    assert!(ssl, "could not turn ssl on in the test servers");

    let proxy = free_port();
    let engine = Continuity::builder()
        .health(HEALTH)
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{proxy}"
on_failover = "promote"
buffer_timeout_ms = 8000
upstreams = [
  {{ name = "pg-primary", address = "{p}", role = "primary", user = "postgres" }},
  {{ name = "pg-standby", address = "{s}", role = "secondary", user = "postgres" }},
]"#,
            p = pair.primary.addr(),
            s = pair.standby.addr()
        ))
        .start();
    assert!(
        wait_until(Duration::from_secs(10), || {
            engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
        }),
        "the pg service did not become healthy:\n{}",
        engine.log_text()
    );

    // Normal traffic.
    let mut py = PyDriver::start(SCRIPT, &["127.0.0.1", &proxy.to_string()]);
    psycopg_features(&mut py, ssl, "normal");
    psql_features(proxy, ssl, "normal");

    // Open at the kill: psycopg connections in every state (`idle` without
    // TLS, the others with the default sslmode=prefer, so over TLS), an
    // idle psql session without TLS, and a psql query in flight over TLS.
    let r = py.ask(&json!({"op": "arm", "ssl": ssl}).to_string());
    assert_eq!(r["ok"], true, "arm: {r}");
    let base = format!("host=127.0.0.1 port={proxy} user=postgres dbname=postgres");
    let mut session = Command::new("psql")
        .args(["-X", "-At", &format!("{base} sslmode=disable")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut session_in = session.stdin.take().expect("stdin");
    writeln!(session_in, "SELECT 'session before';").expect("write to psql");
    let in_flight = psql_spawn(&base, "SELECT pg_sleep(30) -- psql-in-flight-at-kill");
    wait_active(proxy, "psql-in-flight-at-kill");
    pair.wait_for_standby_to_catch_up();

    pair.kill_primary();
    assert!(
        wait_until(Duration::from_secs(30), || {
            engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"]
                == "pg-standby"
        }),
        "no failover to the standby:\n{}",
        engine.log_text()
    );

    // What each open connection saw.
    let r = py.ask(&json!({"op": "after"}).to_string());
    assert_eq!(r["ok"], true, "after: {r}");
    eprintln!("--- psycopg across kill -9 of the primary:");
    let seen = r["value"].as_object().expect("an object");
    for (name, what) in seen {
        eprintln!("  {name}: {what}");
    }
    // Every connection bound to the old primary is gone.
    for (name, what) in seen {
        assert!(
            what["first"]["error"].is_string(),
            "{name} did not see its connection closed: {what}"
        );
        assert_eq!(what["closed"], true, "{name}: {what}");
    }
    let (code, text) = finish(in_flight);
    eprintln!("--- psql across kill -9 of the primary:\n  query in flight: exit {code:?}: {text}");
    assert_ne!(code, Some(0), "psql's query in flight: {text}");
    writeln!(session_in, "SELECT 'session after';").expect("write to psql");
    drop(session_in);
    let (code, text) = finish(session);
    eprintln!("  idle session, next query: exit {code:?}: {text}");
    assert!(text.contains("session before"), "{text}");

    // New connections do everything on the promoted standby.
    assert_eq!(pair.standby.psql("SELECT pg_is_in_recovery()"), "f");
    psycopg_features(&mut py, ssl, "after-failover");
    psql_features(proxy, ssl, "after-failover");
}
