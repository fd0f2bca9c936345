//! A real client library in a Python process, kept running: the test sends
//! it one line per step and reads one JSON line back. Used to drive
//! redis-py, psycopg and the neo4j driver through the proxy (issue #18:
//! tests/clients_*.rs, tests/reattach_e2e.rs).
//!
//! The script reads `sys.stdin` line by line and prints one JSON object
//! per line, flushed. An answer not in within [`ANSWER_WAIT`] fails the
//! test with what the script wrote to stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// Longest wait for one answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(60);

pub struct PyDriver {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl PyDriver {
    /// Runs `script` (the program text) with `args` as `sys.argv[1:]`.
    pub fn start(script: &str, args: &[&str]) -> PyDriver {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        PyDriver {
            child,
            stdin,
            answers,
            stderr,
        }
    }

    /// Sends `line` and returns the JSON answer.
    pub fn ask(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").expect("send a line to the script");
        self.stdin.flush().expect("flush");
        self.answer()
    }

    /// The next JSON line the script prints (a script may print one
    /// unasked, e.g. "ready").
    pub fn answer(&mut self) -> Value {
        match self.answers.recv_timeout(ANSWER_WAIT) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not JSON: {line:?} ({e}); stderr: {}", self.stderr())),
            Err(e) => panic!(
                "no answer from the script within {ANSWER_WAIT:?} ({e}); stderr: {}",
                self.stderr()
            ),
        }
    }

    /// Asks the script to run `feature` until it works, as an application
    /// would after a failover (`{"op": "until_ok", "feature": F}`, answered
    /// `{"ok", "errors", "value"}`); asserts that it did. Prints and returns
    /// the exceptions seen on the way, and the value. `label` names the
    /// client in the output.
    pub fn until_ok(&mut self, label: &str, feature: &str) -> (Vec<String>, Value) {
        let r = self.ask(&serde_json::json!({ "op": "until_ok", "feature": feature }).to_string());
        let errors: Vec<String> = r["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e.as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default();
        eprintln!(
            "{label} failover {feature}: {} exception(s) {errors:?}, then {}",
            errors.len(),
            r["value"]
        );
        assert_eq!(
            r["ok"],
            true,
            "{label}: {feature} did not work again after the failover: {r}\nstderr: {}",
            self.stderr()
        );
        (errors, r["value"].clone())
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for PyDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether python3 can import `module` (a client library the tests need).
pub fn has_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One client process of a test and what it saw, printed as it goes:
/// each step is `{"op": OP}`, answered `{"ok", "value"}` or `{"ok": false,
/// "error"}` (tests/clients_*.rs).
pub struct PyClient {
    pub py: PyDriver,
    /// Names the client in the output.
    pub label: String,
}

impl PyClient {
    /// An op that must succeed in normal traffic; its value.
    pub fn ok(&mut self, op: &str) -> Value {
        let r = self.py.ask(&serde_json::json!({ "op": op }).to_string());
        assert_eq!(
            r["ok"],
            true,
            "{}: {op} failed in normal traffic: {r}\nstderr: {}",
            self.label,
            self.py.stderr()
        );
        eprintln!("{} normal {op}: {}", self.label, r["value"]);
        r["value"].clone()
    }

    /// An op whose outcome is recorded, not asserted.
    pub fn record(&mut self, op: &str) -> Value {
        let r = self.py.ask(&serde_json::json!({ "op": op }).to_string());
        eprintln!("{} failover {op}: {r}", self.label);
        r
    }

    /// [`PyDriver::until_ok`] under this client's label.
    pub fn until_ok(&mut self, feature: &str) -> (Vec<String>, Value) {
        self.py.until_ok(&self.label, feature)
    }
}
