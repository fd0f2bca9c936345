//! `multiplex = true` on a PostgreSQL service: clients' statements share a
//! few server connections that continuity opens itself
//! (`application_name = 'continuity-multiplex'`). Real PostgreSQL 15
//! primary + streaming standby ([`PgPair`]), the real binary, real clients
//! (long-lived `psql` sessions driven line by line, `pgbench`) and a tiny
//! raw wire-protocol client for what the tools do not show (SQLSTATEs,
//! the authentication request, the transaction status byte):
//!
//! - continuity answers the startup itself (SSLRequest gets `N`, no
//!   password is asked unless the upstreams have one); 30 clients at once
//!   each get exactly their own answers (one row, many rows, 5 MB, errors)
//!   while the primary sees at most 3 shared connections and none named
//!   after the clients;
//! - a client in a transaction has a server connection of its own until
//!   the transaction ends: uncommitted rows, rollbacks and an aborted
//!   transaction are seen exactly as with direct connections, and a
//!   bystander's SELECTs never fail meanwhile;
//! - session state (SET, RESET, DISCARD, LISTEN/UNLISTEN, PREPARE,
//!   DEALLOCATE, DECLARE ... WITH HOLD, temp tables, named extended-protocol
//!   statements) is refused with SQLSTATE 0A000 and the client goes on;
//!   `SET LOCAL` in a transaction works;
//! - pgbench: `-i` (DDL, COPY, VACUUM), select-only (simple and extended
//!   protocol) and TPC-B runs with no failed transaction and consistent
//!   balances; `-M prepared` is refused;
//! - with `password_env`, continuity asks for a cleartext password and
//!   checks it (28P01 when wrong); a user or database other than the
//!   upstreams' is refused with a message saying "multiplex";
//! - kill -9 of the primary: idle sessions (and one that sends during the
//!   outage) run their next statement on the promoted standby without
//!   reconnecting.
//! - a CancelRequest with the key continuity handed a client stops that
//!   client's statement with 57014, on a shared connection or inside a
//!   transaction, and the client goes on; a wrong pid or secret, or another
//!   client's key, cancels nothing.
//! - a BEGIN sent while the server has no slot free (53300) waits for one,
//!   within `buffer_timeout_ms`, instead of failing.
//!
//! Every test starts its own PgPair and continuity; no assertion is on
//! speed.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::continuity::Continuity;
use support::proc::tail;
use support::*;

const HEALTH: &str = "check_interval_seconds = 0.2\nfailure_threshold = 2\nhold_down_seconds = 1\nconnect_timeout_ms = 300";
/// What every refusal of a statement that would hold session state says.
const REFUSED: &str = "not supported on a multiplexed connection";
/// The `application_name` of the server connections continuity opens.
const MUX_APP: &str = "continuity-multiplex";
/// Most shared server connections a service may hold for clients that
/// only send plain statements: `multiplex_connections`, 4 by default.
const MAX_SHARED: i64 = 4;
/// The `application_name` the psql clients ask for (never forwarded).
const CLIENT_APP: &str = "psql-client";
/// Longest wait for one answer (a failover may hold one up to
/// `buffer_timeout_ms`, 10 s here).
const ANSWER_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------

/// continuity with one multiplexed postgres service `pg` over the pair.
struct Proxy {
    engine: Continuity,
    port: u16,
}

impl Proxy {
    /// `cred` is appended to both upstream tables (e.g. `, password_env = "X"`).
    fn start(pair: &PgPair, cred: &str) -> Proxy {
        let port = free_port();
        let engine = Continuity::builder()
            .health(HEALTH)
            .service(&format!(
                r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{port}"
on_failover = "promote"
buffer_timeout_ms = 10000
multiplex = true
upstreams = [
  {{ name = "pg-primary", address = "{p}", role = "primary", user = "postgres"{cred} }},
  {{ name = "pg-standby", address = "{s}", role = "secondary", user = "postgres"{cred} }},
]"#,
                p = pair.primary.addr(),
                s = pair.standby.addr()
            ))
            .start();
        let proxy = Proxy { engine, port };
        assert!(
            wait_until(Duration::from_secs(15), || {
                proxy.engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
            }),
            "the multiplexed pg service never became healthy{}",
            proxy.log()
        );
        proxy
    }

    /// A long-lived psql session through the proxy (user and database
    /// `postgres`, `PGAPPNAME=psql-client`).
    fn psql(&self, name: &str) -> Psql {
        Psql::open(self.port, name, &[], &self.engine.log)
    }

    /// As [`Proxy::psql`], with extra psql arguments (e.g. `-v VERBOSITY=verbose`).
    fn psql_with(&self, name: &str, args: &[&str]) -> Psql {
        Psql::open(self.port, name, args, &self.engine.log)
    }

    /// The tail of continuity's log, for failure messages.
    fn log(&self) -> String {
        log_of(&self.engine.log)
    }

    fn active_upstream(&self) -> serde_json::Value {
        self.engine.get("/api/ops/failover/status").1["services"][0]["active_upstream"].clone()
    }
}

fn log_of(path: &Path) -> String {
    format!("\n--- continuity.log (tail)\n{}", tail(path, 150))
}

/// `SELECT count(*) ...` run directly on a server.
fn count(server: &PgServer, sql: &str) -> i64 {
    let text = server.psql(sql);
    text.parse()
        .unwrap_or_else(|e| panic!("{sql:?} answered {text:?}: {e}"))
}

/// Server connections of `application_name = app` on `server`, not counting
/// the one asking.
fn backends_named(server: &PgServer, app: &str) -> i64 {
    count(
        server,
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = '{app}' AND pid <> pg_backend_pid()"
        ),
    )
}

/// Sets its flag when dropped, so that a helper thread polling it stops
/// even when the test fails before telling it to.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// A long-lived psql session, driven line by line
// ---------------------------------------------------------------------------

/// What psql printed for one batch of statements.
#[derive(Debug, Default)]
struct Answer {
    /// stdout lines (`-A -t`: one per row, cells separated by `|`).
    out: Vec<String>,
    /// stderr lines (errors, notices).
    err: Vec<String>,
}

impl Answer {
    fn err_text(&self) -> String {
        self.err.join("\n")
    }
}

/// `psql -X -q -A -t -v ON_ERROR_STOP=0` kept running with its stdin piped:
/// each batch of statements is followed by `\echo MARK` and `\warn MARK`,
/// so the answer is complete once the marker has come back on stdout and
/// on stderr (psql flushes both before it reads its next line). psql in a
/// script never reconnects: a session that answers after a failover is
/// the same client connection.
struct Psql {
    name: String,
    child: ChildGuard,
    stdin: ChildStdin,
    out: Receiver<String>,
    err: Receiver<String>,
    seq: u32,
    log: PathBuf,
}

fn line_reader(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` up to `mark` (excluded); Err with what came and why not.
fn read_until(rx: &Receiver<String>, mark: &str, deadline: Instant) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == mark => return Ok(lines),
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("no marker within {ANSWER_WAIT:?}; got {lines:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(format!("psql closed the stream (exited); got {lines:?}"))
            }
        }
    }
}

/// What is left on `rx` once the process has exited (up to 2 s).
fn drain(rx: &Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        lines.push(line);
    }
    lines
}

impl Psql {
    fn open(port: u16, name: &str, args: &[&str], log: &Path) -> Psql {
        let mut child = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0"])
            .args(args)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .env("PGAPPNAME", CLIENT_APP)
            .env("PGCONNECT_TIMEOUT", "15")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs");
        let stdin = child.stdin.take().expect("psql stdin");
        let out = line_reader(child.stdout.take().expect("psql stdout"));
        let err = line_reader(child.stderr.take().expect("psql stderr"));
        Psql {
            name: name.to_string(),
            child: ChildGuard::new(format!("psql {name}"), child),
            stdin,
            out,
            err,
            seq: 0,
            log: log.to_path_buf(),
        }
    }

    /// Sends `sql` (statements ending in `;`) and the markers; returns the
    /// marker to [`Psql::recv`] with. Does not wait.
    fn send(&mut self, sql: &str) -> String {
        self.seq += 1;
        let mark = format!("done-{}-{}", self.name, self.seq);
        // A psql that has exited is reported by recv, with what it printed.
        let _ = write!(self.stdin, "{sql}\n\\echo {mark}\n\\warn {mark}\n")
            .and_then(|()| self.stdin.flush());
        mark
    }

    /// The answer to the batch sent with `mark`.
    fn recv(&mut self, mark: &str) -> Result<Answer, String> {
        let deadline = Instant::now() + ANSWER_WAIT;
        match read_until(&self.out, mark, deadline) {
            Ok(out) => match read_until(&self.err, mark, deadline) {
                Ok(err) => Ok(Answer { out, err }),
                Err(e) => Err(format!("psql {}: stdout {out:?}, stderr: {e}", self.name)),
            },
            Err(e) => Err(format!(
                "psql {} (running: {}): stdout: {e}; stderr {:?}",
                self.name,
                self.child.is_running(),
                drain(&self.err)
            )),
        }
    }

    /// Sends `sql` and waits for its answer; panics (with continuity's
    /// log) if psql does not answer.
    fn run(&mut self, sql: &str) -> Answer {
        let mark = self.send(sql);
        match self.recv(&mark) {
            Ok(a) => a,
            Err(e) => panic!("{sql:?}: {e}{}", log_of(&self.log)),
        }
    }

    /// The rows of `sql`, which must raise no error.
    fn ok(&mut self, sql: &str) -> Vec<String> {
        let a = self.run(sql);
        assert!(
            a.err.is_empty(),
            "psql {}: {sql:?} failed: {}\nstdout: {:?}{}",
            self.name,
            a.err_text(),
            a.out,
            log_of(&self.log)
        );
        a.out
    }

    /// The single value `sql` answers.
    fn one(&mut self, sql: &str) -> String {
        let out = self.ok(sql);
        assert_eq!(
            out.len(),
            1,
            "psql {}: {sql:?} answered {out:?}{}",
            self.name,
            log_of(&self.log)
        );
        out.into_iter().next().unwrap_or_default()
    }

    /// `sql` must fail with an error containing `needle`.
    fn fails_with(&mut self, sql: &str, needle: &str) -> Answer {
        let a = self.run(sql);
        assert!(
            a.err_text().contains(needle),
            "psql {}: {sql:?} should fail with {needle:?}; stderr: {}\nstdout: {:?}{}",
            self.name,
            a.err_text(),
            a.out,
            log_of(&self.log)
        );
        a
    }

    fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}

// ---------------------------------------------------------------------------
// A raw wire-protocol client (protocol 3.0), for what psql does not show
// ---------------------------------------------------------------------------

type Msg = (u8, Vec<u8>);

struct Wire {
    s: TcpStream,
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Wire {
    fn connect(port: u16) -> Wire {
        let s = TcpStream::connect(loopback(port))
            .unwrap_or_else(|e| panic!("connect to the proxy on {port}: {e}"));
        s.set_read_timeout(Some(ANSWER_WAIT)).expect("read timeout");
        let _ = s.set_nodelay(true);
        Wire { s }
    }

    fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to the proxy");
    }

    /// SSLRequest; the one-byte answer (`S` or `N`).
    fn ssl_request(&mut self) -> u8 {
        let mut m = 8i32.to_be_bytes().to_vec();
        m.extend(80877103i32.to_be_bytes());
        self.write(&m);
        let mut b = [0u8; 1];
        self.s.read_exact(&mut b).expect("the answer to SSLRequest");
        b[0]
    }

    fn startup(&mut self, user: &str, database: &str) {
        let mut body = 196608i32.to_be_bytes().to_vec();
        for (k, v) in [
            ("user", user),
            ("database", database),
            ("application_name", "wire-client"),
        ] {
            body.extend(cstr(k));
            body.extend(cstr(v));
        }
        body.push(0);
        let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        m.extend(body);
        self.write(&m);
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = vec![tag];
        m.extend(((body.len() + 4) as i32).to_be_bytes());
        m.extend(body);
        self.write(&m);
    }

    fn recv(&mut self) -> std::io::Result<Msg> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if !(4..=64 * 1024 * 1024).contains(&len) {
            return Err(std::io::Error::other(format!(
                "message {:?} of length {len}",
                head[0] as char
            )));
        }
        let mut body = vec![0u8; len as usize - 4];
        self.s.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    /// Messages up to and including ReadyForQuery; panics (with what came)
    /// if the connection ends first.
    fn until_ready(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            match self.recv() {
                Ok(m) => {
                    let ready = m.0 == b'Z';
                    msgs.push(m);
                    if ready {
                        return msgs;
                    }
                }
                Err(e) => panic!(
                    "no ReadyForQuery ({e}); got {}, errors {:?}",
                    tags(&msgs),
                    errors(&msgs)
                ),
            }
        }
    }

    /// Messages until the server closes the connection.
    fn until_closed(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        while let Ok(m) = self.recv() {
            msgs.push(m);
        }
        msgs
    }

    fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(b'Q', &cstr(sql));
        self.until_ready()
    }

    fn parse(&mut self, statement: &str, sql: &str) {
        let mut b = cstr(statement);
        b.extend(cstr(sql));
        b.extend(0i16.to_be_bytes());
        self.send(b'P', &b);
    }

    fn bind(&mut self, portal: &str, statement: &str) {
        let mut b = cstr(portal);
        b.extend(cstr(statement));
        b.extend(0i16.to_be_bytes()); // parameter format codes
        b.extend(0i16.to_be_bytes()); // parameters
        b.extend(0i16.to_be_bytes()); // result format codes
        self.send(b'B', &b);
    }

    fn execute(&mut self, portal: &str) {
        let mut b = cstr(portal);
        b.extend(0i32.to_be_bytes());
        self.send(b'E', &b);
    }

    fn sync(&mut self) {
        self.send(b'S', &[]);
    }

    fn password(&mut self, pw: &str) {
        self.send(b'p', &cstr(pw));
    }
}

/// The tags of `msgs`, without the asynchronous ones (NoticeResponse,
/// ParameterStatus), e.g. `"12DCZ"`.
fn tags(msgs: &[Msg]) -> String {
    msgs.iter()
        .map(|m| m.0 as char)
        .filter(|t| !matches!(t, 'N' | 'S'))
        .collect()
}

/// The fields of each ErrorResponse (`'C'`: SQLSTATE, `'M'`: message,
/// `'V'`: severity).
fn errors(msgs: &[Msg]) -> Vec<HashMap<char, String>> {
    msgs.iter()
        .filter(|m| m.0 == b'E')
        .map(|m| {
            m.1.split(|b| *b == 0)
                .filter(|f| !f.is_empty())
                .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
                .collect()
        })
        .collect()
}

/// The first cell of the first DataRow.
fn first_cell(msgs: &[Msg]) -> Option<String> {
    let row = &msgs.iter().find(|m| m.0 == b'D')?.1;
    let len = i32::from_be_bytes(row.get(2..6)?.try_into().ok()?);
    let cell = row.get(6..6 + usize::try_from(len).ok()?)?;
    Some(String::from_utf8_lossy(cell).into_owned())
}

/// The code of an Authentication message (0: ok, 3: cleartext password).
fn auth_code(m: &Msg) -> Option<i32> {
    (m.0 == b'R')
        .then(|| {
            m.1.get(..4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
        .flatten()
}

/// The transaction status of the last ReadyForQuery (`I`, `T` or `E`).
fn ready_status(msgs: &[Msg]) -> char {
    msgs.iter()
        .rev()
        .find(|m| m.0 == b'Z')
        .and_then(|m| m.1.first())
        .map_or('?', |b| *b as char)
}

/// The single error of `msgs` is a refusal (0A000) and the client is idle.
fn assert_refused(msgs: &[Msg], what: &str) {
    let errs = errors(msgs);
    assert_eq!(
        errs.len(),
        1,
        "{what}: one ErrorResponse up to Sync, as from a server: {errs:?} ({})",
        tags(msgs)
    );
    assert_eq!(
        errs[0].get(&'C').map(String::as_str),
        Some("0A000"),
        "{what}: {errs:?}"
    );
    assert!(
        errs[0].get(&'M').is_some_and(|m| m.contains(REFUSED)),
        "{what}: {errs:?}"
    );
    assert_eq!(ready_status(msgs), 'I', "{what}: {}", tags(msgs));
}

// ---------------------------------------------------------------------------
// One-shot tools: psql -c and pgbench, with a watchdog
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

/// Runs `cmd` to its end, killed past `limit` (a proxy that hangs fails
/// the test instead of hanging it).
fn run_for(cmd: &mut Command, limit: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let collect = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = err.join().unwrap_or_default();
    if status.is_none() {
        err.push_str(&format!("\n(killed: still running after {limit:?})"));
    }
    Run {
        code: status.and_then(|s| s.code()),
        out: out.join().unwrap_or_default(),
        err,
    }
}

/// `psql -c sql` through the proxy as `user` on `database`; never prompts
/// (`-w`), reads no password file, and sends `password` if given.
fn psql_once(port: u16, user: &str, database: &str, password: Option<&str>, sql: &str) -> Run {
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-w",
        "-At",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .args(["-U", user, "-d", database, "-c", sql])
    .env("PGCONNECT_TIMEOUT", "15")
    .env("PGPASSFILE", "/nonexistent/continuity-test-pgpass")
    .env_remove("PGPASSWORD");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    run_for(&mut cmd, Duration::from_secs(60))
}

/// `pgbench ARGS postgres` through the proxy.
fn pgbench(port: u16, args: &[&str]) -> Run {
    run_for(
        Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGCONNECT_TIMEOUT", "15"),
        Duration::from_secs(180),
    )
}

/// The number after `label` on a line of pgbench's report
/// (`number of transactions actually processed: 800/800` gives 800).
fn reported(out: &str, label: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.trim().split([' ', '/']).next())
        .and_then(|v| v.parse().ok())
}

/// What a statement must answer.
enum Want {
    /// Exactly these stdout lines, and no error.
    Rows(Vec<String>),
    /// No rows, and an error containing this.
    Error(&'static str),
}

/// Client `i`'s statement in `round` of the many-clients test, and its
/// answer: distinct for every client, so that an answer delivered to the
/// wrong client shows.
fn round_statement(round: usize, i: usize) -> (String, Want) {
    match round {
        // One value each.
        0 => (
            format!("SELECT {i} * 1000;"),
            Want::Rows(vec![(i * 1000).to_string()]),
        ),
        // 5 MB of rows for one client, between the others' small results.
        1 if i == 5 => (
            "SELECT g, repeat('v', 1000) FROM generate_series(1, 5000) g;".to_string(),
            Want::Rows(
                (1..=5000)
                    .map(|g| format!("{g}|{}", "v".repeat(1000)))
                    .collect(),
            ),
        ),
        // Several rows each.
        1 => {
            let n = i % 4 + 1;
            (
                format!("SELECT 'client-{i}', g FROM generate_series(1, {n}) g;"),
                Want::Rows((1..=n).map(|g| format!("client-{i}|{g}")).collect()),
            )
        }
        // A few clients' statements fail: only theirs.
        2 if i % 10 == 3 => ("SELECT 1/0;".to_string(), Want::Error("division by zero")),
        2 => (
            format!("SELECT {i} * 1000 + 2;"),
            Want::Rows(vec![(i * 1000 + 2).to_string()]),
        ),
        // And everyone goes on, those whose statement failed too.
        _ => (
            format!("SELECT {i} * 1000 + 3, 'c{i}';"),
            Want::Rows(vec![format!("{}|c{i}", i * 1000 + 3)]),
        ),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn many_clients_share_a_few_server_connections() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();

    // The startup is answered by continuity: TLS declined, no password
    // asked (none is configured), an idle session that answers queries.
    let mut wire = Wire::connect(proxy.port);
    assert_eq!(wire.ssl_request(), b'N', "SSLRequest{}", log());
    wire.startup("postgres", "postgres");
    let hello = wire.until_ready();
    assert_eq!(
        hello.first().and_then(auth_code),
        Some(0),
        "no password configured: AuthenticationOk at once; got {} {:?}{}",
        tags(&hello),
        errors(&hello),
        log()
    );
    assert_eq!(ready_status(&hello), 'I');
    let r = wire.query("SELECT 'wire'");
    assert_eq!(
        first_cell(&r).as_deref(),
        Some("wire"),
        "{} {:?}",
        tags(&r),
        errors(&r)
    );

    // 30 sessions at once; in each round every session sends its
    // statement before any answer is read, so they are all in flight
    // together and answered over the shared connection(s).
    const N: usize = 30;
    let mut clients: Vec<Psql> = (0..N).map(|i| proxy.psql(&format!("c{i}"))).collect();
    for round in 0..4 {
        let sent: Vec<(String, String, Want)> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                let (sql, want) = round_statement(round, i);
                let mark = c.send(&sql);
                (sql, mark, want)
            })
            .collect();
        for (i, (c, (sql, mark, want))) in clients.iter_mut().zip(sent).enumerate() {
            let a = c
                .recv(&mark)
                .unwrap_or_else(|e| panic!("round {round}, {e}{}", log()));
            let good = match &want {
                Want::Rows(rows) => a.err.is_empty() && &a.out == rows,
                Want::Error(needle) => a.out.is_empty() && a.err_text().contains(needle),
            };
            assert!(
                good,
                "round {round}: client {i} sent {sql:?} and got something else: \
                 stdout {} line(s) {:?}, stderr {:?}{}",
                a.out.len(),
                a.out
                    .iter()
                    .take(5)
                    .map(|l| l.chars().take(80).collect::<String>())
                    .collect::<Vec<_>>(),
                a.err,
                log()
            );
        }
    }

    // All 30 still connected and idle: the server has a few connections
    // of continuity's for them, none under the clients' name and none
    // other than continuity's (its probes are `continuity-probe`).
    let primary = &pair.primary;
    let shared = backends_named(primary, MUX_APP);
    assert!(
        (1..=MAX_SHARED).contains(&shared),
        "{shared} '{MUX_APP}' connections on the primary for {N} clients\n{}{}",
        primary.psql("SELECT application_name, state, query FROM pg_stat_activity"),
        log()
    );
    assert_eq!(
        backends_named(primary, CLIENT_APP),
        0,
        "the clients' application_name reached the server{}",
        log()
    );
    let others = count(
        primary,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
             AND pid <> pg_backend_pid() \
             AND application_name NOT IN ('{MUX_APP}', 'continuity-probe')"
        ),
    );
    assert_eq!(
        others,
        0,
        "client backends other than continuity's with {N} multiplexed clients:\n{}{}",
        primary.psql("SELECT application_name, state, query FROM pg_stat_activity"),
        log()
    );
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(c.is_running(), "psql c{i} exited{}", log());
    }
    // The raw client, idle all along, still answers.
    let r = wire.query("SELECT 'still here'");
    assert_eq!(
        first_cell(&r).as_deref(),
        Some("still here"),
        "{}",
        tags(&r)
    );
}

#[test]
fn transactions_stay_isolated() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    pair.primary.psql("CREATE TABLE t (x int)");

    // A bystander runs SELECTs all along and must never see an error or a
    // wrong answer, whatever the others' transactions do. (Stopped when
    // the test ends, passed or failed.)
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let done = Arc::new(AtomicUsize::new(0));
    let bystander = {
        let mut c = proxy.psql("bystander");
        let (stop, done) = (stop.0.clone(), done.clone());
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let mark = c.send(&format!("SELECT {n}, count(*) >= 0 FROM t;"));
                match c.recv(&mark) {
                    Ok(a) if a.err.is_empty() && a.out == [format!("{n}|t")] => {}
                    Ok(a) => wrong.push(format!("#{n}: {a:?}")),
                    Err(e) => {
                        // Reported at the join below.
                        wrong.push(format!("#{n}: {e}"));
                        break;
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            wrong
        })
    };
    // Lets the bystander run a few statements in the current state.
    let bystander_runs = || {
        let from = done.load(Ordering::SeqCst);
        let ran = wait_until(ANSWER_WAIT, || {
            done.load(Ordering::SeqCst) >= from + 3 || bystander.is_finished()
        });
        assert!(
            ran && !bystander.is_finished(),
            "the bystander is stuck or gone: {}{}",
            if ran { "its psql failed" } else { "no answer" },
            log()
        );
    };

    let mut a = proxy.psql("a");
    let mut b = proxy.psql("b");
    assert_eq!(b.one("SELECT count(*) FROM t;"), "0");

    // Uncommitted: A sees its row, B does not.
    assert!(a.ok("BEGIN; INSERT INTO t VALUES (1);").is_empty());
    assert_eq!(
        a.one("SELECT count(*) FROM t;"),
        "1",
        "A in its transaction{}",
        log()
    );
    assert_eq!(
        b.one("SELECT count(*) FROM t;"),
        "0",
        "B sees A's uncommitted row: A's transaction is not on a connection of its own{}",
        log()
    );
    bystander_runs();
    assert_eq!(b.one("SELECT count(*) FROM t;"), "0");
    assert_eq!(a.one("SELECT count(*) FROM t;"), "1");
    assert_eq!(
        count(&pair.primary, "SELECT count(*) FROM t"),
        0,
        "a direct client sees A's uncommitted row"
    );

    // Committed: everyone sees it.
    assert!(a.ok("COMMIT;").is_empty());
    assert_eq!(
        b.one("SELECT count(*) FROM t;"),
        "1",
        "after A's COMMIT{}",
        log()
    );
    assert_eq!(count(&pair.primary, "SELECT count(*) FROM t"), 1);

    // Rolled back: nobody sees it.
    assert!(a.ok("BEGIN; INSERT INTO t VALUES (2);").is_empty());
    assert_eq!(a.one("SELECT count(*) FROM t;"), "2");
    assert_eq!(b.one("SELECT count(*) FROM t;"), "1");
    bystander_runs();
    assert!(a.ok("ROLLBACK;").is_empty());
    assert_eq!(
        a.one("SELECT count(*) FROM t;"),
        "1",
        "after A's ROLLBACK{}",
        log()
    );
    assert_eq!(b.one("SELECT count(*) FROM t;"), "1");

    // An aborted transaction is A's only: its next statements are refused
    // by the server until ROLLBACK, and B goes on meanwhile.
    let aborted = a.fails_with("BEGIN; SELECT 1/0; SELECT 1;", "division by zero");
    assert!(
        aborted
            .err_text()
            .contains("current transaction is aborted"),
        "the statement after the error in A's transaction: {aborted:?}{}",
        log()
    );
    assert!(aborted.out.is_empty(), "{aborted:?}");
    assert_eq!(
        b.one("SELECT 7;"),
        "7",
        "B while A's transaction is aborted{}",
        log()
    );
    bystander_runs();
    a.fails_with("SELECT 2;", "current transaction is aborted");
    assert_eq!(
        a.ok("ROLLBACK; SELECT 5;"),
        ["5"],
        "A after ROLLBACK{}",
        log()
    );
    assert_eq!(b.one("SELECT count(*) FROM t;"), "1");

    // Several transactions at once, each on its own connection: A's and
    // B's uncommitted rows are their own until each commits.
    assert!(a.ok("BEGIN; INSERT INTO t VALUES (10);").is_empty());
    assert!(b.ok("BEGIN; INSERT INTO t VALUES (20);").is_empty());
    assert_eq!(
        a.one("SELECT string_agg(x::text, ',' ORDER BY x) FROM t;"),
        "1,10"
    );
    assert_eq!(
        b.one("SELECT string_agg(x::text, ',' ORDER BY x) FROM t;"),
        "1,20"
    );
    bystander_runs();
    assert!(a.ok("COMMIT;").is_empty());
    assert_eq!(
        b.one("SELECT string_agg(x::text, ',' ORDER BY x) FROM t;"),
        "1,10,20"
    );
    assert!(b.ok("ROLLBACK;").is_empty());
    assert_eq!(
        a.one("SELECT string_agg(x::text, ',' ORDER BY x) FROM t;"),
        "1,10"
    );

    // A connection of its own is given back when its transaction ends:
    // many transactions one after the other do not pile up connections,
    // and none is left in a transaction on the server.
    for i in 0..20 {
        assert!(a
            .ok(&format!(
                "BEGIN; INSERT INTO t VALUES ({}); ROLLBACK;",
                100 + i
            ))
            .is_empty());
    }
    assert_eq!(a.one("SELECT count(*) FROM t;"), "2");
    let mux = backends_named(&pair.primary, MUX_APP);
    assert!(
        mux <= MAX_SHARED + 5,
        "{mux} '{MUX_APP}' connections after 20 transactions of one client, one at a time\n{}{}",
        pair.primary
            .psql("SELECT application_name, state, query FROM pg_stat_activity"),
        log()
    );
    assert_eq!(
        count(
            &pair.primary,
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{MUX_APP}' \
                 AND state LIKE 'idle in transaction%'"
            )
        ),
        0,
        "a server connection left in a transaction after every client's ended{}",
        log()
    );

    bystander_runs();
    stop.0.store(true, Ordering::SeqCst);
    let wrong = bystander.join().expect("the bystander thread");
    assert!(
        wrong.is_empty(),
        "the bystander's SELECTs were affected by others' transactions: {wrong:?}{}",
        log()
    );
    assert_eq!(count(&pair.primary, "SELECT count(*) FROM t"), 2);
}

#[test]
fn session_state_statements_are_refused_and_the_client_goes_on() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    // VERBOSITY=verbose: psql prints the SQLSTATE ("ERROR:  0A000: ...").
    let mut c = proxy.psql_with("c", &["-v", "VERBOSITY=verbose"]);
    let mut other = proxy.psql("other");
    assert_eq!(c.one("SELECT 1;"), "1");
    let default_path = other.one("SELECT current_setting('search_path');");

    for sql in [
        "SET search_path = nowhere;",
        "set statement_timeout to '1ms';",
        "SET SESSION work_mem = '64MB';",
        "RESET search_path;",
        "RESET ALL;",
        "DISCARD ALL;",
        "LISTEN mux_channel;",
        "UNLISTEN *;",
        "PREPARE mux_p AS SELECT 1;",
        "DEALLOCATE mux_p;",
        "DEALLOCATE ALL;",
        "DECLARE mux_c CURSOR WITH HOLD FOR SELECT 1;",
        "CREATE TEMP TABLE mux_tmp (x int);",
        "CREATE TEMPORARY TABLE mux_tmp2 (x int);",
    ] {
        let a = c.fails_with(sql, REFUSED);
        assert!(
            a.err_text().contains("0A000"),
            "{sql:?}: SQLSTATE 0A000 expected: {}{}",
            a.err_text(),
            log()
        );
        assert!(a.out.is_empty(), "{sql:?}: {a:?}");
        assert_eq!(
            c.one("SELECT 42;"),
            "42",
            "the same session after {sql:?}{}",
            log()
        );
    }
    // Nothing of it reached a server connection: neither this session nor
    // another one sees a changed setting, and no temp table exists.
    assert_eq!(
        c.one("SELECT current_setting('search_path');"),
        default_path
    );
    assert_eq!(
        other.one("SELECT current_setting('search_path');"),
        default_path
    );
    assert_eq!(c.one("SELECT current_setting('statement_timeout');"), "0");
    assert_eq!(other.one("SELECT current_setting('work_mem');"), "4MB");
    assert_eq!(
        count(
            &pair.primary,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'mux_tmp%'"
        ),
        0,
        "a refused CREATE TEMP TABLE created a table{}",
        log()
    );

    // A session SET inside a transaction is refused too; the transaction
    // can still be rolled back.
    assert!(c.ok("BEGIN;").is_empty());
    c.fails_with("SET search_path = nowhere;", REFUSED);
    let rollback = c.run("ROLLBACK;");
    assert!(
        !rollback.err_text().contains("ERROR"),
        "ROLLBACK after a refused SET: {rollback:?}{}",
        log()
    );
    assert_eq!(c.one("SELECT 42;"), "42");
    assert_eq!(
        c.one("SELECT current_setting('search_path');"),
        default_path
    );

    // SET LOCAL in a transaction is allowed, holds for that transaction
    // only, and is not seen by anyone else.
    assert_eq!(
        c.ok("BEGIN; SET LOCAL statement_timeout = '5s'; SELECT 1; COMMIT;"),
        ["1"],
        "SET LOCAL in a transaction{}",
        log()
    );
    assert_eq!(
        c.ok("BEGIN; SET LOCAL statement_timeout = '5s'; \
             SELECT current_setting('statement_timeout'); COMMIT;"),
        ["5s"]
    );
    assert_eq!(c.one("SELECT current_setting('statement_timeout');"), "0");
    assert_eq!(
        other.one("SELECT current_setting('statement_timeout');"),
        "0"
    );

    // The extended protocol: a named statement is refused, once per
    // batch up to Sync as a server would, and the client stays idle and
    // usable; unnamed statements (what libpq's PQexecParams uses) work.
    let mut wire = Wire::connect(proxy.port);
    wire.startup("postgres", "postgres");
    wire.until_ready();
    wire.parse("mux_s1", "SELECT 1");
    wire.sync();
    assert_refused(&wire.until_ready(), "Parse of a named statement");
    wire.parse("mux_s2", "SELECT 2");
    wire.bind("", "mux_s2");
    wire.execute("");
    wire.sync();
    assert_refused(
        &wire.until_ready(),
        "Parse/Bind/Execute of a named statement",
    );
    wire.parse("", "SELECT 40 + 2");
    wire.bind("", "");
    wire.execute("");
    wire.sync();
    let r = wire.until_ready();
    assert_eq!(
        tags(&r),
        "12DCZ",
        "unnamed statement: {:?}{}",
        errors(&r),
        log()
    );
    assert_eq!(first_cell(&r).as_deref(), Some("42"));
    assert_eq!(ready_status(&r), 'I');
    assert_refused(&wire.query("SET search_path = nowhere"), "simple-query SET");
    assert_refused(&wire.query("LISTEN mux_channel"), "simple-query LISTEN");
    let r = wire.query("SELECT 42");
    assert_eq!(first_cell(&r).as_deref(), Some("42"), "{:?}", errors(&r));

    assert!(c.is_running() && other.is_running());
    assert_eq!(other.one("SELECT 43;"), "43");
}

#[test]
fn pgbench_runs_through_the_multiplexed_service() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    let primary = &pair.primary;

    // -i: DROP/CREATE TABLE, COPY in a transaction, VACUUM, ALTER TABLE.
    let init = pgbench(proxy.port, &["-i", "-s", "1"]);
    assert_eq!(init.code, Some(0), "pgbench -i: {init:?}{}", log());
    assert_eq!(
        count(primary, "SELECT count(*) FROM pgbench_accounts"),
        100_000
    );
    assert_eq!(count(primary, "SELECT count(*) FROM pgbench_branches"), 1);
    assert_eq!(count(primary, "SELECT count(*) FROM pgbench_tellers"), 10);
    // COPY the other way, through the proxy.
    let copy = psql_once(
        proxy.port,
        "postgres",
        "postgres",
        None,
        "COPY (SELECT aid FROM pgbench_accounts WHERE aid <= 3 ORDER BY aid) TO STDOUT",
    );
    assert_eq!(copy.code, Some(0), "COPY TO STDOUT: {copy:?}{}", log());
    assert_eq!(copy.out.trim_end(), "1\n2\n3", "COPY TO STDOUT: {copy:?}");

    // Select-only (simple and extended protocol), then TPC-B (BEGIN ...
    // END, UPDATEs and an INSERT). Each run first vacuums and truncates
    // pgbench_history (pgbench without -n), on connections of their own.
    let mut tpcb_processed = 0.0;
    for (what, args) in [
        ("select-only", &["-S", "-c", "8", "-j", "2", "-T", "3"][..]),
        (
            "select-only, extended protocol",
            &["-S", "-M", "extended", "-c", "4", "-j", "2", "-T", "2"][..],
        ),
        ("TPC-B", &["-c", "4", "-j", "2", "-T", "3"][..]),
    ] {
        let run = pgbench(proxy.port, args);
        let report = format!(
            "pgbench {what} {args:?}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}{}",
            run.code,
            run.out,
            run.err,
            log()
        );
        assert_eq!(run.code, Some(0), "{report}");
        assert_eq!(
            reported(&run.out, "number of failed transactions:"),
            Some(0.0),
            "{report}"
        );
        let processed =
            reported(&run.out, "number of transactions actually processed:").unwrap_or(0.0);
        assert!(processed > 0.0, "{report}");
        assert!(
            reported(&run.out, "tps =").is_some_and(|tps| tps > 0.0),
            "{report}"
        );
        assert!(
            !run.err.to_lowercase().contains("error"),
            "an error on pgbench's stderr (its VACUUM or TRUNCATE?): {report}"
        );
        if what == "TPC-B" {
            tpcb_processed = processed;
        }
    }

    // Named prepared statements are refused, and pgbench says why.
    let prepared = pgbench(
        proxy.port,
        &["-n", "-S", "-M", "prepared", "-c", "1", "-t", "5"],
    );
    assert_ne!(
        prepared.code,
        Some(0),
        "pgbench -M prepared: {prepared:?}{}",
        log()
    );
    assert!(
        prepared.err.contains(REFUSED),
        "pgbench -M prepared should say {REFUSED:?}: {prepared:?}{}",
        log()
    );
    // And the service is none the worse for it.
    let after = pgbench(proxy.port, &["-n", "-S", "-c", "2", "-t", "20"]);
    assert_eq!(
        after.code,
        Some(0),
        "pgbench -S after -M prepared: {after:?}{}",
        log()
    );
    assert_eq!(
        reported(&after.out, "number of transactions actually processed:"),
        Some(40.0),
        "{after:?}"
    );

    // Directly on the primary: the data is whole and every TPC-B
    // transaction was atomic (each adds the same delta to an account, a
    // teller and a branch, and logs it in pgbench_history).
    assert_eq!(
        count(primary, "SELECT count(*) FROM pgbench_accounts"),
        100_000
    );
    assert_eq!(count(primary, "SELECT count(*) FROM pgbench_branches"), 1);
    assert_eq!(count(primary, "SELECT count(*) FROM pgbench_tellers"), 10);
    let history = count(primary, "SELECT count(*) FROM pgbench_history") as f64;
    // A transaction committed as -T ran out may be missing from the count.
    assert!(
        history >= tpcb_processed && history <= tpcb_processed + 4.0,
        "{history} rows in pgbench_history for {tpcb_processed} TPC-B transactions{}",
        log()
    );
    let sums = primary.psql(
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ',' || \
                (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ',' || \
                (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ',' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let sums: Vec<&str> = sums.split(',').collect();
    assert!(
        sums.len() == 4 && sums.iter().all(|s| *s == sums[0]),
        "account, teller, branch and history sums differ: {sums:?}{}",
        log()
    );
}

#[test]
fn password_is_checked_by_the_proxy() {
    const ENV: &str = "CONTINUITY_TEST_MUX_PG_PW";
    const PW: &str = "secret-pw";
    std::env::set_var(ENV, PW);
    let pair = PgPair::start();
    pair.primary
        .psql(&format!("ALTER USER postgres PASSWORD '{PW}'"));
    // The servers trust every local connection: they never ask.
    assert_eq!(
        psql_once(
            pair.primary_port(),
            "postgres",
            "postgres",
            None,
            "SELECT 1"
        )
        .out
        .trim(),
        "1"
    );
    let proxy = Proxy::start(&pair, &format!(", password_env = \"{ENV}\""));
    let log = || proxy.log();
    let port = proxy.port;

    let wrong = psql_once(port, "postgres", "postgres", Some("wrong"), "SELECT 1");
    assert_ne!(wrong.code, Some(0), "a wrong password: {wrong:?}{}", log());
    assert!(
        wrong
            .err
            .contains("password authentication failed for user \"postgres\""),
        "a wrong password: {wrong:?}{}",
        log()
    );
    // psql -w with no password: libpq gives up when asked for one.
    let none = psql_once(port, "postgres", "postgres", None, "SELECT 1");
    assert_ne!(none.code, Some(0), "no password: {none:?}{}", log());
    assert!(
        none.err.contains("no password supplied"),
        "no password: the proxy should have asked for one: {none:?}{}",
        log()
    );
    let right = psql_once(port, "postgres", "postgres", Some(PW), "SELECT 1");
    assert_eq!(
        right.code,
        Some(0),
        "the right password: {right:?}{}",
        log()
    );
    assert_eq!(right.out.trim(), "1");

    // Another user or database than the upstreams' is refused (after or
    // without a password: the right one is given, so either order passes).
    for (user, database) in [("nobody", "postgres"), ("postgres", "other")] {
        let r = psql_once(port, user, database, Some(PW), "SELECT 1");
        assert_ne!(
            r.code,
            Some(0),
            "user {user}, database {database}: {r:?}{}",
            log()
        );
        assert!(
            r.err.contains("multiplex"),
            "user {user}, database {database}: the refusal should say why: {r:?}{}",
            log()
        );
    }

    // On the wire: a cleartext password is asked for; a wrong one gets
    // FATAL 28P01 and the connection is closed.
    let mut w = Wire::connect(port);
    assert_eq!(w.ssl_request(), b'N');
    w.startup("postgres", "postgres");
    let ask = w.recv().expect("an authentication request");
    assert_eq!(
        auth_code(&ask),
        Some(3),
        "AuthenticationCleartextPassword: {ask:?}{}",
        log()
    );
    w.password("wrong");
    let end = w.until_closed();
    let errs = errors(&end);
    assert_eq!(errs.len(), 1, "{} {errs:?}", tags(&end));
    assert_eq!(
        errs[0].get(&'C').map(String::as_str),
        Some("28P01"),
        "{errs:?}"
    );
    assert_eq!(
        errs[0].get(&'V').map(String::as_str),
        Some("FATAL"),
        "{errs:?}"
    );
    assert_eq!(
        errs[0].get(&'M').map(String::as_str),
        Some("password authentication failed for user \"postgres\""),
        "{errs:?}"
    );
    // The right one: AuthenticationOk, then an idle session.
    let mut w = Wire::connect(port);
    w.startup("postgres", "postgres");
    assert_eq!(
        auth_code(&w.recv().expect("an authentication request")),
        Some(3)
    );
    w.password(PW);
    let hello = w.until_ready();
    assert_eq!(
        hello.first().and_then(auth_code),
        Some(0),
        "{}",
        tags(&hello)
    );
    assert_eq!(ready_status(&hello), 'I');
    let r = w.query("SELECT 'in'");
    assert_eq!(first_cell(&r).as_deref(), Some("in"), "{:?}", errors(&r));
}

#[test]
fn an_idle_client_carries_on_across_a_failover() {
    let mut pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    pair.primary.psql("CREATE TABLE t (id int)");

    let mut idle: Vec<Psql> = (0..5).map(|i| proxy.psql(&format!("idle{i}"))).collect();
    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(c.one("SELECT 1;"), "1");
        assert!(c.ok(&format!("INSERT INTO t VALUES ({i});")).is_empty());
        assert_eq!(c.one("SELECT pg_is_in_recovery();"), "f");
    }
    pair.wait_for_standby_to_catch_up();

    let mut during = proxy.psql("during");
    assert_eq!(during.one("SELECT 1;"), "1");

    pair.kill_primary();
    // Sent during the outage, once continuity has seen the primary go (so
    // that it is not a statement in flight at the kill): held until the
    // standby is promoted, then answered by it. (If the promotion is
    // quicker than the poll, it is simply answered.)
    wait_until(Duration::from_secs(5), || {
        proxy.engine.get("/api/ops/health").1["services"][0]["status"] != "healthy"
    });
    let held = during.send("SELECT pg_is_in_recovery(); INSERT INTO t VALUES (100);");
    assert!(
        wait_until(Duration::from_secs(30), || proxy.active_upstream()
            == "pg-standby"),
        "no failover to the standby{}",
        log()
    );
    assert_eq!(
        pair.standby.psql("SELECT pg_is_in_recovery()"),
        "f",
        "the standby was not promoted{}",
        log()
    );
    let held = during
        .recv(&held)
        .unwrap_or_else(|e| panic!("the statement sent during the failover: {e}{}", log()));
    assert!(
        held.err.is_empty() && held.out == ["f"],
        "the statement sent during the failover: {held:?}{}",
        log()
    );

    // Every idle session carries on, on the same connection to continuity
    // (psql in a script does not reconnect), on the promoted standby.
    for (i, c) in idle.iter_mut().enumerate() {
        assert_eq!(
            c.one("SELECT pg_is_in_recovery();"),
            "f",
            "idle{i} after the failover{}",
            log()
        );
        assert!(c
            .ok(&format!("INSERT INTO t VALUES ({});", 10 + i))
            .is_empty());
        assert!(c.is_running(), "idle{i} exited{}", log());
    }
    // A new client too.
    let mut fresh = proxy.psql("fresh");
    assert_eq!(fresh.one("SELECT count(*) FROM t;"), "11");

    assert_eq!(count(&pair.standby, "SELECT count(*) FROM t"), 11);
    assert_eq!(
        pair.standby
            .psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "0,1,2,3,4,10,11,12,13,14,100"
    );
    assert!(
        backends_named(&pair.standby, MUX_APP) >= 1,
        "no '{MUX_APP}' connection on the promoted standby{}",
        log()
    );
    assert_eq!(backends_named(&pair.standby, CLIENT_APP), 0);
}

// ---------------------------------------------------------------------------
// CancelRequest with the proxy's keys
// ---------------------------------------------------------------------------

/// SQLSTATE of a cancelled statement.
const CANCELED: &str = "57014";
/// Longest a cancelled statement may take to answer.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// A client started up (no password) and the BackendKeyData it was given:
/// the proxy's pid and secret, not a server's.
fn session(port: u16) -> (Wire, (i32, [u8; 4])) {
    let mut w = Wire::connect(port);
    w.startup("postgres", "postgres");
    let hello = w.until_ready();
    let key = hello
        .iter()
        .find(|m| m.0 == b'K')
        .and_then(|m| {
            let pid = i32::from_be_bytes(m.1.get(..4)?.try_into().ok()?);
            let secret: [u8; 4] = m.1.get(4..8)?.try_into().ok()?;
            Some((pid, secret))
        })
        .unwrap_or_else(|| panic!("no BackendKeyData at startup: {}", tags(&hello)));
    (w, key)
}

/// A CancelRequest for `pid` with `secret`, on a connection of its own, as
/// libpq's `PQcancel` sends it; returns once the proxy has closed it (it
/// answers nothing, as PostgreSQL does).
fn send_cancel(port: u16, pid: i32, secret: &[u8]) {
    let mut s = TcpStream::connect(loopback(port)).expect("connect for the cancel");
    s.set_read_timeout(Some(CANCEL_WAIT)).expect("read timeout");
    let mut m = i32::try_from(12 + secret.len())
        .expect("a short secret")
        .to_be_bytes()
        .to_vec();
    m.extend(80877102i32.to_be_bytes());
    m.extend(pid.to_be_bytes());
    m.extend(secret);
    s.write_all(&m).expect("write the CancelRequest");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "a CancelRequest is answered nothing: {rest:?}"
    );
}

/// Waits until `sql` is running (state active) on the primary; if it
/// never does, fails with what the client was answered instead.
fn wait_running(pair: &PgPair, w: &mut Wire, sql: &str, log: impl Fn() -> String) {
    let q =
        format!("SELECT count(*) FROM pg_stat_activity WHERE query = '{sql}' AND state = 'active'");
    if !wait_until(Duration::from_secs(10), || count(&pair.primary, &q) == 1) {
        let answer = w.until_ready();
        panic!(
            "{sql:?} never ran on the primary; the client was answered {} {:?}{}",
            tags(&answer),
            errors(&answer),
            log()
        );
    }
}

/// Sends `sql` on `w`, cancels it with `key` once it runs, and checks that
/// it ends with 57014 within [`CANCEL_WAIT`]; the answer.
fn cancelled(
    pair: &PgPair,
    port: u16,
    w: &mut Wire,
    key: (i32, [u8; 4]),
    sql: &str,
    log: impl Fn() -> String,
) -> Vec<Msg> {
    w.send(b'Q', &cstr(sql));
    wait_running(pair, w, sql, &log);
    let sent = Instant::now();
    send_cancel(port, key.0, &key.1);
    let answer = w.until_ready();
    let errs = errors(&answer);
    assert_eq!(
        errs.first().and_then(|e| e.get(&'C')).map(String::as_str),
        Some(CANCELED),
        "{sql:?} after a CancelRequest with its client's key: {} {errs:?}{}",
        tags(&answer),
        log()
    );
    assert!(
        sent.elapsed() < CANCEL_WAIT,
        "the cancel took {:?}",
        sent.elapsed()
    );
    answer
}

/// A shared statement (`SELECT pg_sleep(30)`) is cancelled by a
/// CancelRequest with its client's key, and the client goes on.
#[test]
fn a_cancel_request_stops_a_shared_statement() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    let (mut w, key) = session(proxy.port);
    assert_eq!(first_cell(&w.query("SELECT 1")).as_deref(), Some("1"));

    let answer = cancelled(&pair, proxy.port, &mut w, key, "SELECT pg_sleep(30)", log);
    assert_eq!(ready_status(&answer), 'I', "{}", tags(&answer));
    let after = w.query("SELECT 1");
    assert!(errors(&after).is_empty(), "{:?}{}", errors(&after), log());
    assert_eq!(first_cell(&after).as_deref(), Some("1"));
    // Again: the key stays the client's for its whole session.
    cancelled(&pair, proxy.port, &mut w, key, "SELECT pg_sleep(31)", log);
    assert_eq!(first_cell(&w.query("SELECT 2")).as_deref(), Some("2"));
}

/// In a transaction the client is on a connection of its own: the cancel
/// goes to that server backend, the transaction is aborted (as on a
/// direct connection) and ROLLBACK ends it.
#[test]
fn a_cancel_request_stops_a_statement_in_a_transaction() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    let (mut w, key) = session(proxy.port);
    let begin = w.query("BEGIN");
    assert_eq!(ready_status(&begin), 'T', "{}", tags(&begin));

    let answer = cancelled(&pair, proxy.port, &mut w, key, "SELECT pg_sleep(30)", log);
    assert_eq!(ready_status(&answer), 'E', "{}", tags(&answer));
    let rollback = w.query("ROLLBACK");
    assert!(
        errors(&rollback).is_empty(),
        "{:?}{}",
        errors(&rollback),
        log()
    );
    assert_eq!(ready_status(&rollback), 'I');
    assert_eq!(first_cell(&w.query("SELECT 1")).as_deref(), Some("1"));
}

/// A CancelRequest whose pid or secret is not exactly a client's cancels
/// nothing; the right key then does (so that the test is not passed by a
/// proxy that forwards no cancel at all).
#[test]
fn a_cancel_request_with_a_wrong_key_does_nothing() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    let (mut w, (pid, secret)) = session(proxy.port);

    let sql = "SELECT pg_sleep(4)";
    w.send(b'Q', &cstr(sql));
    wait_running(&pair, &mut w, sql, log);
    let wrong_secret = secret.map(|b| b ^ 0x5a);
    send_cancel(proxy.port, pid, &wrong_secret);
    send_cancel(proxy.port, pid.wrapping_sub(1), &secret);
    send_cancel(proxy.port, pid.wrapping_add(1), &secret);
    let mut longer = secret.to_vec();
    longer.extend([0, 0, 0, 0]);
    send_cancel(proxy.port, pid, &longer);
    send_cancel(proxy.port, pid, &secret[..3]);
    std::thread::sleep(Duration::from_secs(1));
    wait_running(&pair, &mut w, sql, log);
    let answer = w.until_ready();
    assert!(
        errors(&answer).is_empty(),
        "a cancel with a wrong key stopped the statement: {:?}{}",
        errors(&answer),
        log()
    );
    assert_eq!(tags(&answer), "TDCZ", "{:?}", errors(&answer));

    cancelled(
        &pair,
        proxy.port,
        &mut w,
        (pid, secret),
        "SELECT pg_sleep(30)",
        log,
    );
}

/// Client A's key does not cancel client B's statement on the shared
/// connection they both use; B's own key does.
#[test]
fn a_cancel_request_stops_only_its_own_client() {
    let pair = PgPair::start();
    let proxy = Proxy::start(&pair, "");
    let log = || proxy.log();
    let (mut a, a_key) = session(proxy.port);
    let (mut b, b_key) = session(proxy.port);
    assert_ne!(a_key.0, b_key.0);
    // Both on the same shared connection (the least loaded: the first).
    let a_backend = first_cell(&a.query("SELECT pg_backend_pid()"));
    let b_backend = first_cell(&b.query("SELECT pg_backend_pid()"));
    assert!(a_backend.is_some());
    assert_eq!(a_backend, b_backend, "one shared connection{}", log());

    let sql = "SELECT pg_sleep(4)";
    b.send(b'Q', &cstr(sql));
    wait_running(&pair, &mut b, sql, log);
    send_cancel(proxy.port, a_key.0, &a_key.1);
    std::thread::sleep(Duration::from_secs(1));
    wait_running(&pair, &mut b, sql, log);
    let answer = b.until_ready();
    assert!(
        errors(&answer).is_empty(),
        "A's key cancelled B's statement: {:?}{}",
        errors(&answer),
        log()
    );
    assert_eq!(tags(&answer), "TDCZ", "{:?}", errors(&answer));
    assert_eq!(first_cell(&a.query("SELECT 1")).as_deref(), Some("1"));

    cancelled(&pair, proxy.port, &mut b, b_key, "SELECT pg_sleep(30)", log);
    assert_eq!(first_cell(&b.query("SELECT 1")).as_deref(), Some("1"));
    assert_eq!(first_cell(&a.query("SELECT 2")).as_deref(), Some("2"));
}

/// A transaction needs a server connection of its own. When the server
/// has no slot free ("sorry, too many clients already", SQLSTATE 53300),
/// or is starting up or shutting down (57P03), the connection is tried
/// again while the statement may be held (`buffer_timeout_ms`), as a
/// refused TCP connect is, instead of failing the statement at once.
#[test]
fn a_transaction_waits_for_a_free_server_slot() {
    let mut server = PgServer::start();
    server.psql("ALTER SYSTEM SET max_connections = 5");
    server.psql("ALTER SYSTEM SET superuser_reserved_connections = 0");
    server.restart();
    let port = free_port();
    // Checks far apart: the probe must not see the full server and take
    // the upstream out of the route (then the statement would be held for
    // another reason).
    let engine = Continuity::builder()
        .health("check_interval_seconds = 30\nfailure_threshold = 3\nconnect_timeout_ms = 300")
        .service(&format!(
            r#"name = "pg"
kind = "postgres"
listen = "127.0.0.1:{port}"
buffer_timeout_ms = 20000
multiplex = true
multiplex_connections = 1
upstreams = [
  {{ name = "pg-primary", address = "{p}", role = "primary", user = "postgres" }},
]"#,
            p = server.addr()
        ))
        .start();
    let log = || log_of(&engine.log);
    assert!(
        wait_until(Duration::from_secs(15), || {
            engine.get("/api/ops/health").1["services"][0]["status"] == "healthy"
        }),
        "the multiplexed pg service never became healthy{}",
        log()
    );
    let (mut w, _) = session(port);
    assert_eq!(first_cell(&w.query("SELECT 1")).as_deref(), Some("1"));

    // Every other slot taken by direct sessions, until the server refuses.
    let mut direct = Vec::new();
    for i in 0..10 {
        let mut p = Psql::open(server.port(), &format!("direct-{i}"), &[], &engine.log);
        let mark = p.send("SELECT 1;");
        match p.recv(&mark) {
            Ok(a) if a.out == ["1"] => direct.push(p),
            // Refused: psql exits ("too many clients already").
            _ => break,
        }
    }
    assert!(
        try_psql(server.port(), "SELECT 1").is_err(),
        "the server still has a free slot after {} sessions",
        direct.len()
    );

    // BEGIN needs a private connection: held while the server is full.
    w.send(b'Q', &cstr("BEGIN"));
    std::thread::sleep(Duration::from_millis(1500));
    let freed = Instant::now();
    drop(direct.pop());
    let begun = w.until_ready();
    assert!(
        errors(&begun).is_empty(),
        "BEGIN failed instead of waiting for a slot: {:?}{}",
        errors(&begun),
        log()
    );
    assert_eq!(ready_status(&begun), 'T', "{}", tags(&begun));
    assert!(freed.elapsed() < Duration::from_secs(15), "{}", log());
    let inside = w.query("SELECT 2");
    assert_eq!(
        first_cell(&inside).as_deref(),
        Some("2"),
        "{:?}",
        errors(&inside)
    );
    assert_eq!(ready_status(&w.query("COMMIT")), 'I');
    assert!(
        log().contains("trying again"),
        "the refusal was not logged as retried{}",
        log()
    );
}
