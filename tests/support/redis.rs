//! Real `redis-server` processes on free loopback ports, and a tiny blocking
//! RESP client for tests.
//!
//! ```ignore
//! let pair = RedisPair::start();              // primary + replica, link up
//! redis_cmd(&pair.primary.addr(), &["SET", "k", "v"])?;
//! pair.primary.kill();                         // SIGKILL: the port refuses
//! pair.primary.restart();                      // same port, same dir, empty
//! ```
//!
//! Every server runs with `--save "" --appendonly no`: nothing survives a
//! kill, as with the machine's own Redis. Its log is `redis.log` in its
//! temporary dir and is quoted when a start fails. A replica links in about
//! 0.1 s thanks to `--repl-diskless-sync-delay 0`.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::ports::{free_port, loopback, wait_for_port_closed, wait_until};
use super::proc::{record_server_pid, server_dir, tail, ChildGuard};

/// How long a start may take before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for a [`RedisServer`] not yet started.
#[derive(Default)]
pub struct RedisOptions {
    args: Vec<String>,
    replica_of: Option<u16>,
}

impl RedisOptions {
    /// Extra `redis-server` arguments, e.g. `&["--requirepass", "x"]`.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Starts as a replica of `primary` (`--replicaof 127.0.0.1 PORT`).
    pub fn replica_of(mut self, primary: &RedisServer) -> Self {
        self.replica_of = Some(primary.port());
        self
    }

    pub fn start(self) -> RedisServer {
        let dir = server_dir("redis");
        let mut args = self.args;
        if let Some(port) = self.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), port.to_string()]);
        }
        let mut server = RedisServer {
            port: free_port(),
            dir,
            args,
            child: None,
        };
        server.spawn();
        server
    }
}

/// One `redis-server` process; SIGKILLed when dropped.
pub struct RedisServer {
    // Declared first so that it is dropped (killed) before its dir is removed.
    child: Option<ChildGuard>,
    port: u16,
    dir: TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// A standalone server with default options.
    pub fn start() -> Self {
        RedisOptions::default().start()
    }

    /// Options builder: `RedisServer::options().with_args(&[..]).start()`.
    pub fn options() -> RedisOptions {
        RedisOptions::default()
    }

    /// Shorthand for `RedisServer::options().with_args(args).start()`.
    pub fn with_args(args: &[&str]) -> RedisOptions {
        RedisOptions::default().with_args(args)
    }

    /// A replica of `primary`, started; call [`wait_for_link_up`] to wait for
    /// the initial sync.
    ///
    /// [`wait_for_link_up`]: RedisServer::wait_for_link_up
    pub fn replica_of(primary: &RedisServer) -> Self {
        RedisOptions::default().replica_of(primary).start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        loopback(self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// PID of the running server. Panics if it has been killed.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(ChildGuard::pid)
            .expect("redis server is not running (killed?)")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(ChildGuard::is_running)
    }

    /// SIGKILL, as a crash would; returns once the port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
        assert!(
            wait_for_port_closed(&self.addr(), Duration::from_secs(5)),
            "redis port {} still open after SIGKILL",
            self.port
        );
    }

    /// Starts again on the same port and dir with the same arguments (killing
    /// the running process first, if any). Data is gone: nothing is saved.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command on this server (see [`redis_cmd`]).
    pub fn cmd(&self, args: &[&str]) -> Result<String, RedisError> {
        redis_cmd(&self.addr(), args)
    }

    /// `INFO section` as text.
    pub fn info(&self, section: &str) -> String {
        self.cmd(&["INFO", section])
            .unwrap_or_else(|e| panic!("INFO {section} on redis {}: {e}", self.port))
    }

    /// True if `INFO replication` reports `master_link_status:up`.
    pub fn link_is_up(&self) -> bool {
        self.cmd(&["INFO", "replication"])
            .is_ok_and(|info| info.contains("master_link_status:up"))
    }

    /// Waits until this replica has synced with its primary; panics after 10 s.
    pub fn wait_for_link_up(&self) {
        assert!(
            wait_until(START_TIMEOUT, || self.link_is_up()),
            "redis replica {} did not report master_link_status:up within {START_TIMEOUT:?}\n{}",
            self.port,
            tail(&self.log_path(), 20)
        );
    }

    /// `REPLICAOF NO ONE`: this replica becomes a primary.
    pub fn promote(&self) {
        self.cmd(&["REPLICAOF", "NO", "ONE"])
            .unwrap_or_else(|e| panic!("REPLICAOF NO ONE on redis {}: {e}", self.port));
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = ChildGuard::spawn(format!("redis-server :{}", self.port), &mut cmd);
        let addr = self.addr();
        let up = wait_until(START_TIMEOUT, || {
            // A server with --requirepass answers NOAUTH: it is up all the same.
            let answers = match redis_cmd(&addr, &["PING"]) {
                Ok(_) => true,
                Err(RedisError::Server(msg)) => msg.starts_with("NOAUTH"),
                Err(_) => false,
            };
            answers || !child.is_running()
        });
        assert!(
            up && child.is_running(),
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}\n{}",
            self.port,
            tail(&self.log_path(), 20)
        );
        if let Some(pid) = child.pid() {
            record_server_pid(self.dir.path(), pid);
        }
        self.child = Some(child);
    }
}

/// A primary and a replica that has completed its initial sync.
pub struct RedisPair {
    pub primary: RedisServer,
    pub replica: RedisServer,
}

impl RedisPair {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Both servers get `args` (e.g. `--requirepass x --masterauth x`).
    pub fn start_with_args(args: &[&str]) -> Self {
        let primary = RedisServer::with_args(args).start();
        let replica = RedisServer::with_args(args).replica_of(&primary).start();
        replica.wait_for_link_up();
        Self { primary, replica }
    }
}

/// What can go wrong with [`redis_cmd`].
#[derive(Debug)]
pub enum RedisError {
    /// Connect, read or write failed (or timed out after 2 s).
    Io(io::Error),
    /// The server answered with an error reply, e.g. `ERR ...`, `NOAUTH ...`.
    Server(String),
    /// The reply was a nil bulk string or nil array (e.g. GET of a missing key).
    Nil,
    /// The reply was not valid RESP.
    Protocol(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "io: {e}"),
            Self::Server(msg) => write!(f, "server error: {msg}"),
            Self::Nil => f.write_str("nil reply"),
            Self::Protocol(msg) => write!(f, "protocol: {msg}"),
        }
    }
}

impl std::error::Error for RedisError {}

impl From<io::Error> for RedisError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// Sends one command on a fresh connection and returns the reply as text:
/// simple and bulk strings as they are, integers in decimal, arrays one
/// element per line. Error replies are `Err(Server)`, nil is `Err(Nil)`.
/// Connect, read and write time out after 2 s.
pub fn redis_cmd(addr: &str, args: &[&str]) -> Result<String, RedisError> {
    match redis_call(addr, args)? {
        Resp::Error(msg) => Err(RedisError::Server(msg)),
        Resp::Bulk(None) | Resp::Array(None) => Err(RedisError::Nil),
        other => Ok(to_text(&other)),
    }
}

/// Sends one command on a fresh connection and returns the raw reply.
pub fn redis_call(addr: &str, args: &[&str]) -> Result<Resp, RedisError> {
    let timeout = Duration::from_secs(2);
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| RedisError::Protocol(format!("{addr} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&encode(args))?;
    read_reply(&mut BufReader::new(stream))
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn to_text(resp: &Resp) -> String {
    match resp {
        Resp::Simple(s) | Resp::Error(s) => s.clone(),
        Resp::Int(n) => n.to_string(),
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Resp::Bulk(None) | Resp::Array(None) => String::new(),
        Resp::Array(Some(items)) => items.iter().map(to_text).collect::<Vec<_>>().join("\n"),
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String, RedisError> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(RedisError::Io(io::ErrorKind::UnexpectedEof.into()));
    }
    line.strip_suffix("\r\n")
        .map(str::to_owned)
        .ok_or_else(|| RedisError::Protocol(format!("line without CRLF: {line:?}")))
}

fn parse_len(s: &str) -> Result<i64, RedisError> {
    s.parse()
        .map_err(|_| RedisError::Protocol(format!("bad length {s:?}")))
}

/// Reads one RESP2 reply.
pub fn read_reply(r: &mut impl BufRead) -> Result<Resp, RedisError> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" => Ok(Resp::Simple(rest.to_owned())),
        "-" => Ok(Resp::Error(rest.to_owned())),
        ":" => Ok(Resp::Int(parse_len(rest)?)),
        "$" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Bulk(None));
            }
            let mut buf = vec![0; len as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            Ok(Resp::Bulk(Some(buf)))
        }
        "*" => {
            let len = parse_len(rest)?;
            if len < 0 {
                return Ok(Resp::Array(None));
            }
            let items = (0..len).map(|_| read_reply(r)).collect::<Result<_, _>>()?;
            Ok(Resp::Array(Some(items)))
        }
        _ => Err(RedisError::Protocol(format!("unknown reply {line:?}"))),
    }
}

/// A raw RESP connection kept open across commands (through a proxy, to
/// see what one client connection sees): commands sent, replies read one
/// at a time, and whether the other side closed it.
pub struct RespConn {
    pub r: BufReader<TcpStream>,
}

impl RespConn {
    pub fn open(addr: &str) -> RespConn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        RespConn {
            r: BufReader::new(s),
        }
    }

    pub fn send(&mut self, args: &[&str]) {
        self.r.get_mut().write_all(&encode(args)).expect("send");
    }

    /// The next RESP2 reply.
    pub fn reply(&mut self) -> Resp {
        read_reply(&mut self.r).unwrap_or_else(|e| panic!("reply: {e:?}"))
    }

    /// Sends and reads a RESP2 reply.
    pub fn call(&mut self, args: &[&str]) -> Resp {
        self.send(args);
        read_reply(&mut self.r).unwrap_or_else(|e| panic!("{args:?}: {e:?}"))
    }

    /// Sends and returns the first line of the reply (RESP3 replies too).
    pub fn first_line(&mut self, args: &[&str]) -> String {
        self.send(args);
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a reply");
        line
    }

    /// Whether the other side closed this connection (EOF or reset within
    /// 10 s); what still arrives first (a subscriber's message) is skipped.
    pub fn closed(&mut self) -> bool {
        use std::io::Read;
        let mut b = [0u8; 256];
        loop {
            match self.r.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    }
}

/// Asserts a `+OK`.
pub fn ok(r: Resp) {
    assert!(matches!(&r, Resp::Simple(s) if s == "OK"), "{r:?}");
}

/// A bulk string's text; panics on anything else.
pub fn bulk(r: Resp) -> String {
    match r {
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("not a bulk string: {other:?}"),
    }
}
