//! Per-connection protocol state of the memory fallback: `AUTH`, `HELLO`
//! (RESP2 or RESP3), `QUIT`, then the data commands of `commands.rs`.

use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::commands::{data, int_arg, wrong_args, Memory};
use super::resp::Reply;

/// How long a connection waits after a failed `AUTH` (or `HELLO ... AUTH`)
/// before its reply is written and its next command is read.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Failed `AUTH`s after which the connection is closed (after the reply).
pub const AUTH_MAX_FAILURES: u32 = 5;

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    /// 2 or 3 (`HELLO 3`).
    pub proto: u8,
    pub authed: bool,
    /// `QUIT` was received: close after the reply.
    pub quit: bool,
    /// Largest reply built for one command (`fallback_max_reply_bytes`).
    pub max_reply: usize,
    /// Failed `AUTH`s on this connection (the caller throttles them).
    pub auth_failures: u32,
}

impl Session {
    pub fn new(max_reply: usize) -> Session {
        Session {
            proto: 2,
            authed: false,
            quit: false,
            max_reply,
            auth_failures: 0,
        }
    }
}

/// Credentials a client must present: `(user, password)` of each upstream
/// that has a password. Empty: no password is asked for.
pub type Credentials = [(Option<String>, String)];

/// Equality in constant time, whatever the lengths: the SHA-256 digests
/// are compared with `subtle`.
fn ct_same(a: &[u8], b: &[u8]) -> Choice {
    Sha256::digest(a)
        .as_slice()
        .ct_eq(Sha256::digest(b).as_slice())
}

/// Whether `user` (default: any) and `pass` match one of `creds`. Every
/// credential is compared, in constant time, so that the time taken says
/// nothing about which part of a guess was right.
fn check_auth(creds: &Credentials, user: Option<&[u8]>, pass: &[u8]) -> bool {
    let mut ok = Choice::from(0);
    for (u, p) in creds {
        let want = u.as_deref().unwrap_or("default").as_bytes();
        let user_ok = user.map_or(Choice::from(1), |given| ct_same(given, want));
        ok |= user_ok & ct_same(p.as_bytes(), pass);
    }
    ok.into()
}

/// Runs one command. `args` is not empty.
pub fn execute(mem: &mut Memory, s: &mut Session, creds: &Credentials, args: &[Vec<u8>]) -> Reply {
    let name = String::from_utf8_lossy(args.first().map(Vec::as_slice).unwrap_or_default())
        .to_ascii_uppercase();
    let a = args.get(1..).unwrap_or_default();
    let needs_auth = !creds.is_empty() && !s.authed;
    match name.as_str() {
        "AUTH" => {
            let (user, pass) = match a {
                [p] => (None, p),
                [u, p] => (Some(u.as_slice()), p),
                _ => return wrong_args(&name),
            };
            if creds.is_empty() {
                return Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
            }
            if check_auth(creds, user, pass) {
                s.authed = true;
                Reply::ok()
            } else {
                s.auth_failures = s.auth_failures.saturating_add(1);
                Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
            }
        }
        "HELLO" => hello(s, creds, a),
        "QUIT" => {
            s.quit = true;
            Reply::ok()
        }
        _ if needs_auth => Reply::err("NOAUTH Authentication required."),
        _ => data(mem, &name, a, s.max_reply),
    }
}

fn hello(s: &mut Session, creds: &Credentials, a: &[Vec<u8>]) -> Reply {
    let mut proto = s.proto;
    let mut rest = a;
    if let Some((v, more)) = a.split_first() {
        match int_arg(v) {
            Some(2) => proto = 2,
            Some(3) => proto = 3,
            _ => return Reply::err("NOPROTO unsupported protocol version"),
        }
        rest = more;
    }
    while let Some((opt, more)) = rest.split_first() {
        match (opt.to_ascii_uppercase().as_slice(), more) {
            (b"AUTH", [u, p, tail @ ..]) => {
                if !check_auth(creds, Some(u), p) {
                    s.auth_failures = s.auth_failures.saturating_add(1);
                    return Reply::err(
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    );
                }
                s.authed = true;
                rest = tail;
            }
            (b"SETNAME", [_, tail @ ..]) => rest = tail,
            _ => return Reply::err("ERR syntax error in HELLO option"),
        }
    }
    if !creds.is_empty() && !s.authed {
        return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    }
    s.proto = proto;
    let kv = |k: &str, v: Reply| (Reply::Bulk(k.as_bytes().to_vec()), v);
    Reply::Map(vec![
        kv("server", Reply::bulk(b"redis")),
        kv("version", Reply::bulk(b"7.0.0")),
        kv("proto", Reply::Integer(i64::from(proto))),
        kv("id", Reply::Integer(0)),
        kv("mode", Reply::bulk(b"standalone")),
        kv("role", Reply::bulk(b"master")),
        kv("modules", Reply::Array(Vec::new())),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(mem: &mut Memory, s: &mut Session, line: &str) -> Reply {
        let args: Vec<Vec<u8>> = line.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        execute(mem, s, &[], &args)
    }

    fn fresh() -> (Memory, Session) {
        (Memory::default(), Session::new(usize::MAX))
    }

    #[test]
    fn hello_switches_protocol() {
        let (mut m, mut s) = fresh();
        let r = run(&mut m, &mut s, "HELLO 3");
        assert!(matches!(r, Reply::Map(_)));
        assert_eq!(s.proto, 3);
        run(&mut m, &mut s, "HELLO 2");
        assert_eq!(s.proto, 2);
        assert!(
            matches!(run(&mut m, &mut s, "HELLO 4"), Reply::Error(e) if e.starts_with("NOPROTO"))
        );
    }

    #[test]
    fn auth_is_checked_against_upstream_password() {
        let (mut m, mut s) = fresh();
        let creds = vec![(None, "sekret".to_string())];
        let args =
            |l: &str| -> Vec<Vec<u8>> { l.split(' ').map(|w| w.as_bytes().to_vec()).collect() };
        assert!(
            matches!(execute(&mut m, &mut s, &creds, &args("GET a")), Reply::Error(e) if e.starts_with("NOAUTH"))
        );
        assert!(
            matches!(execute(&mut m, &mut s, &creds, &args("AUTH nope")), Reply::Error(e) if e.starts_with("WRONGPASS"))
        );
        assert_eq!(
            execute(&mut m, &mut s, &creds, &args("AUTH sekret")),
            Reply::ok()
        );
        assert_eq!(execute(&mut m, &mut s, &creds, &args("GET a")), Reply::Null);
        assert_eq!(s.auth_failures, 1, "the wrong AUTH is counted");
        let (_, mut s2) = fresh();
        assert!(matches!(
            execute(
                &mut m,
                &mut s2,
                &creds,
                &args("HELLO 3 AUTH default sekret")
            ),
            Reply::Map(_)
        ));
        assert!(
            matches!(run(&mut m, &mut s2, "AUTH x"), Reply::Error(e) if e.contains("without any password"))
        );
        assert_eq!(s2.auth_failures, 0, "no password asked: not a failure");
    }

    #[test]
    fn auth_matches_user_and_password_of_any_upstream() {
        let creds = vec![
            (None, "one".to_string()),
            (Some("app".to_string()), "two".to_string()),
        ];
        assert!(check_auth(&creds, None, b"one"));
        assert!(check_auth(&creds, None, b"two"));
        assert!(check_auth(&creds, Some(b"default"), b"one"));
        assert!(check_auth(&creds, Some(b"app"), b"two"));
        assert!(!check_auth(&creds, Some(b"app"), b"one"));
        assert!(!check_auth(&creds, Some(b"default"), b"two"));
        assert!(!check_auth(&creds, None, b"on"));
        assert!(!check_auth(&creds, None, b"one "));
        assert!(!check_auth(&creds, None, b""));
        assert!(!check_auth(&[], None, b""));
        let (mut m, mut s) = fresh();
        let args: Vec<Vec<u8>> = ["HELLO", "3", "AUTH", "app", "one"]
            .iter()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        assert!(
            matches!(execute(&mut m, &mut s, &creds, &args), Reply::Error(e) if e.starts_with("WRONGPASS"))
        );
        assert_eq!(s.auth_failures, 1);
    }
}
