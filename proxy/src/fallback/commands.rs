//! The commands the memory fallback answers, over one [`Memory`] (the store
//! and the journal of its writes, bounded together by `max_bytes`).

use std::time::{Duration, Instant};

use super::journal::{Journal, Op};
use super::resp::Reply;
use super::store::{Store, StoreError};

pub const OOM: &str = "OOM continuity fallback memory limit reached";

/// The keyspace and the journal of one service, under its mutex.
#[derive(Debug, Default)]
pub struct Memory {
    pub store: Store,
    pub journal: Journal,
    pub max_bytes: usize,
}

impl Memory {
    pub fn used(&self) -> usize {
        self.store.bytes() + self.journal.bytes()
    }

    /// Whether a write of about `incoming` bytes fits, purging expired keys
    /// once before saying no.
    fn fits(&mut self, incoming: usize) -> bool {
        if self.used() + incoming <= self.max_bytes {
            return true;
        }
        self.store.purge_expired();
        self.used() + incoming <= self.max_bytes
    }
}

pub(super) fn wrong_args(cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

pub(super) fn int_arg(a: &[u8]) -> Option<i64> {
    std::str::from_utf8(a).ok()?.parse().ok()
}

fn not_int() -> Reply {
    Reply::err(StoreError::NotInteger.message())
}

fn store_err(e: StoreError) -> Reply {
    Reply::err(e.message())
}

fn opt(r: Option<Vec<u8>>) -> Reply {
    r.map(Reply::Bulk).unwrap_or(Reply::Null)
}

/// Redis `SET` options we support: EX, PX, NX, XX, KEEPTTL.
fn set(mem: &mut Memory, a: &[Vec<u8>]) -> Reply {
    let [key, value, opts @ ..] = a else {
        return wrong_args("SET");
    };
    let (mut ttl, mut nx, mut xx, mut keep) = (None, false, false, false);
    let mut i = 0;
    while let Some(o) = opts.get(i) {
        match o.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"KEEPTTL" => keep = true,
            unit @ (b"EX" | b"PX") if ttl.is_none() => {
                i += 1;
                let n = match opts.get(i).and_then(|v| int_arg(v)) {
                    Some(n) if n > 0 => n as u64,
                    Some(_) => return Reply::err("ERR invalid expire time in 'set' command"),
                    None => return not_int(),
                };
                ttl = Some(if unit == b"EX" {
                    Duration::from_secs(n.min(u64::MAX / 1000))
                } else {
                    Duration::from_millis(n)
                });
            }
            _ => return Reply::err("ERR syntax error"),
        }
        i += 1;
    }
    if (nx && xx) || (keep && ttl.is_some()) {
        return Reply::err("ERR syntax error");
    }
    let exists = mem.store.exists(key);
    if (nx && exists) || (xx && !exists) {
        return Reply::Null;
    }
    if !mem.fits(2 * (key.len() + value.len()) + 128) {
        return Reply::err(OOM);
    }
    let expires = match ttl {
        Some(d) => Instant::now().checked_add(d),
        None if keep => mem.store.expires(key),
        None => None,
    };
    mem.store.set(key, value.clone(), expires);
    mem.journal.push(Op::Set {
        key: key.clone(),
        value: value.clone(),
        expires,
    });
    Reply::ok()
}

fn incr(mem: &mut Memory, key: &[u8], delta: i64) -> Reply {
    if !mem.fits(2 * key.len() + 160) {
        return Reply::err(OOM);
    }
    match mem.store.incr_by(key, delta) {
        Ok(n) => {
            mem.journal.push(Op::Set {
                key: key.to_vec(),
                value: n.to_string().into_bytes(),
                expires: mem.store.expires(key),
            });
            Reply::Integer(n)
        }
        Err(e) => store_err(e),
    }
}

/// Bytes counted per reply element besides its payload (RESP framing:
/// type, length, CRLFs), when a reply's size is computed before it is built.
pub const ELEMENT_OVERHEAD: usize = 16;

/// The size of the reply a read command would build, from the lengths of
/// what it would copy (nothing is copied): each element's payload plus
/// [`ELEMENT_OVERHEAD`]. 0 for commands whose reply is small by nature.
fn reply_size(mem: &mut Memory, name: &str, a: &[Vec<u8>]) -> usize {
    let item = |len: Option<usize>| len.unwrap_or(0).saturating_add(ELEMENT_OVERHEAD);
    match (name, a) {
        ("PING", [m]) | ("ECHO", [m]) => item(Some(m.len())),
        ("GET", [k]) => item(mem.store.str_len(k)),
        ("MGET", keys) => keys.iter().fold(ELEMENT_OVERHEAD, |n, k| {
            n.saturating_add(item(mem.store.str_len(k)))
        }),
        ("HGET", [k, f]) => item(mem.store.hget_len(k, f)),
        ("HGETALL", [k]) => match mem.store.hash_len(k) {
            Some((fields, bytes)) => bytes
                .saturating_add(fields.saturating_mul(2 * ELEMENT_OVERHEAD))
                .saturating_add(ELEMENT_OVERHEAD),
            None => ELEMENT_OVERHEAD,
        },
        _ => 0,
    }
}

/// Runs one data command; a read whose reply would pass `max_reply` bytes
/// answers `-ERR` instead, without building the reply.
pub fn data(mem: &mut Memory, name: &str, a: &[Vec<u8>], max_reply: usize) -> Reply {
    let needed = reply_size(mem, name, a);
    if needed > max_reply {
        return Reply::err(format!(
            "ERR continuity fallback: the reply to '{}' would be {needed} bytes, past fallback_max_reply_bytes ({max_reply})",
            name.to_ascii_lowercase()
        ));
    }
    let size: usize = a.iter().map(|x| x.len() + 32).sum();
    match (name, a) {
        ("PING", []) => Reply::Simple("PONG".into()),
        ("PING", [m]) | ("ECHO", [m]) => Reply::Bulk(m.clone()),
        ("SELECT", [db]) if int_arg(db) == Some(0) => Reply::ok(),
        ("SELECT", [_]) => {
            Reply::err("ERR continuity fallback: only database 0 is served from memory")
        }
        ("GET", [k]) => mem.store.get(k).map(opt).unwrap_or_else(store_err),
        ("SET", _) => set(mem, a),
        ("MGET", keys) if !keys.is_empty() => Reply::Array(
            keys.iter()
                .map(|k| opt(mem.store.get(k).ok().flatten()))
                .collect(),
        ),
        ("MSET", kv) if !kv.is_empty() && kv.len() % 2 == 0 => {
            if !mem.fits(2 * size + 64) {
                return Reply::err(OOM);
            }
            for p in kv.chunks(2) {
                if let [k, v] = p {
                    mem.store.set(k, v.clone(), None);
                    mem.journal.push(Op::Set {
                        key: k.clone(),
                        value: v.clone(),
                        expires: None,
                    });
                }
            }
            Reply::ok()
        }
        ("DEL", keys) if !keys.is_empty() => {
            if !mem.fits(size + 64) {
                return Reply::err(OOM);
            }
            let n = keys.iter().filter(|k| mem.store.del(k)).count();
            mem.journal.push(Op::Del {
                keys: keys.to_vec(),
            });
            Reply::Integer(n as i64)
        }
        ("EXISTS", keys) if !keys.is_empty() => {
            Reply::Integer(keys.iter().filter(|k| mem.store.exists(k)).count() as i64)
        }
        ("EXPIRE", [k, secs]) => {
            let Some(secs) = int_arg(secs) else {
                return not_int();
            };
            if !mem.fits(size + 64) {
                return Reply::err(OOM);
            }
            if !mem.store.exists(k) {
                return Reply::Integer(0);
            }
            if secs <= 0 {
                mem.store.del(k);
                mem.journal.push(Op::Del {
                    keys: vec![k.clone()],
                });
                return Reply::Integer(1);
            }
            let at =
                Instant::now().checked_add(Duration::from_secs((secs as u64).min(u64::MAX / 1000)));
            let Some(at) = at else {
                return Reply::err("ERR invalid expire time in 'expire' command");
            };
            mem.store.expire(k, Some(at));
            mem.journal.push(Op::Expire { key: k.clone(), at });
            Reply::Integer(1)
        }
        ("TTL", [k]) => Reply::Integer(mem.store.ttl(k)),
        ("INCR", [k]) => incr(mem, k, 1),
        ("DECR", [k]) => incr(mem, k, -1),
        ("INCRBY", [k, d]) | ("DECRBY", [k, d]) => match int_arg(d) {
            Some(d) if name == "INCRBY" => incr(mem, k, d),
            Some(d) => match d.checked_neg() {
                Some(n) => incr(mem, k, n),
                None => Reply::err(StoreError::Overflow.message()),
            },
            None => not_int(),
        },
        ("HGET", [k, f]) => mem.store.hget(k, f).map(opt).unwrap_or_else(store_err),
        ("HGETALL", [k]) => match mem.store.hgetall(k) {
            Ok(all) => Reply::Map(
                all.into_iter()
                    .map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v)))
                    .collect(),
            ),
            Err(e) => store_err(e),
        },
        ("HSET", [k, fv @ ..]) if !fv.is_empty() && fv.len() % 2 == 0 => {
            if !mem.fits(2 * size + 64) {
                return Reply::err(OOM);
            }
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = fv
                .chunks(2)
                .filter_map(|p| match p {
                    [f, v] => Some((f.clone(), v.clone())),
                    _ => None,
                })
                .collect();
            match mem.store.hset(k, &pairs) {
                Ok(n) => {
                    let expires = mem.store.expires(k);
                    mem.journal.push(Op::HSet {
                        key: k.clone(),
                        pairs,
                        expires,
                    });
                    Reply::Integer(n)
                }
                Err(e) => store_err(e),
            }
        }
        ("HDEL", [k, fields @ ..]) if !fields.is_empty() => {
            if !mem.fits(size + 64) {
                return Reply::err(OOM);
            }
            match mem.store.hdel(k, fields) {
                Ok(n) => {
                    mem.journal.push(Op::HDel {
                        key: k.clone(),
                        fields: fields.to_vec(),
                    });
                    Reply::Integer(n)
                }
                Err(e) => store_err(e),
            }
        }
        (
            "PING" | "ECHO" | "SELECT" | "GET" | "MGET" | "MSET" | "DEL" | "EXISTS" | "EXPIRE"
            | "TTL" | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "HGET" | "HGETALL" | "HSET" | "HDEL",
            _,
        ) => wrong_args(name),
        _ => {
            Reply::err(format!(
            "ERR continuity fallback: command '{}' is not served from memory while redis is down",
            name.chars().take(64).collect::<String>().to_ascii_lowercase()
        ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn run(mem: &mut Memory, line: &str) -> Reply {
        let args: Vec<Vec<u8>> = line.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        data(mem, &name, &args[1..], usize::MAX)
    }

    fn fresh() -> Memory {
        Memory {
            max_bytes: 1 << 20,
            ..Memory::default()
        }
    }

    #[test]
    fn basic_commands_and_journal() {
        let mut m = fresh();
        assert_eq!(run(&mut m, "PING"), Reply::Simple("PONG".into()));
        assert_eq!(run(&mut m, "SET a 1 EX 100"), Reply::ok());
        assert_eq!(run(&mut m, "SET a 2 NX"), Reply::Null);
        assert_eq!(run(&mut m, "SET b 2 XX"), Reply::Null);
        assert_eq!(run(&mut m, "INCR a"), Reply::Integer(2));
        assert_eq!(run(&mut m, "TTL a"), Reply::Integer(100));
        assert_eq!(run(&mut m, "INCRBY a 10"), Reply::Integer(12));
        assert_eq!(run(&mut m, "DECR a"), Reply::Integer(11));
        assert_eq!(run(&mut m, "MSET x 1 y 2"), Reply::ok());
        assert_eq!(
            run(&mut m, "MGET x nope y"),
            Reply::Array(vec![Reply::bulk(b"1"), Reply::Null, Reply::bulk(b"2")])
        );
        assert_eq!(run(&mut m, "HSET h f v g w"), Reply::Integer(2));
        assert_eq!(run(&mut m, "HGET h g"), Reply::bulk(b"w"));
        assert_eq!(run(&mut m, "HDEL h g"), Reply::Integer(1));
        assert_eq!(
            run(&mut m, "GET h"),
            Reply::err(StoreError::WrongType.message())
        );
        assert_eq!(run(&mut m, "EXISTS x y nope"), Reply::Integer(2));
        assert_eq!(run(&mut m, "DEL x nope"), Reply::Integer(1));
        assert_eq!(run(&mut m, "EXPIRE y 0"), Reply::Integer(1));
        assert_eq!(run(&mut m, "TTL y"), Reply::Integer(-2));
        assert!(
            matches!(run(&mut m, "KEYS *"), Reply::Error(e) if e.starts_with("ERR continuity fallback"))
        );
        assert!(matches!(run(&mut m, "GET"), Reply::Error(e) if e.contains("wrong number")));
        assert!(matches!(run(&mut m, "SET a b EX 0"), Reply::Error(_)));
        // SET, INCR, INCRBY, DECR, MSET (2), HSET, HDEL, DEL, EXPIRE-as-DEL
        assert_eq!(m.journal.len(), 10);
    }

    #[test]
    fn replies_past_the_bound_are_refused_unbuilt() {
        let mut m = fresh();
        let big = "x".repeat(1000);
        assert_eq!(run(&mut m, &format!("SET big {big}")), Reply::ok());
        assert_eq!(
            run(&mut m, &format!("HSET h f {big} g {big}")),
            Reply::Integer(2)
        );
        let args =
            |l: &str| -> Vec<Vec<u8>> { l.split(' ').map(|w| w.as_bytes().to_vec()).collect() };
        let limited = |m: &mut Memory, l: &str, max: usize| {
            let a = args(l);
            data(
                m,
                &String::from_utf8_lossy(&a[0]).to_ascii_uppercase(),
                &a[1..],
                max,
            )
        };
        let refused =
            |r: Reply| matches!(r, Reply::Error(e) if e.contains("fallback_max_reply_bytes"));
        // One value fits; three copies of it do not.
        assert!(matches!(limited(&mut m, "GET big", 2100), Reply::Bulk(_)));
        assert!(matches!(
            limited(&mut m, "MGET big big", 2100),
            Reply::Array(_)
        ));
        assert!(refused(limited(&mut m, "MGET big big big", 2100)));
        assert!(refused(limited(&mut m, "GET big", 999)));
        assert!(refused(limited(&mut m, "HGETALL h", 2000)));
        assert!(matches!(limited(&mut m, "HGETALL h", 2100), Reply::Map(_)));
        assert!(refused(limited(&mut m, "HGET h f", 1000)));
        assert!(refused(limited(&mut m, &format!("ECHO {big}"), 1000)));
        // Missing keys and writes are not refused; the store is unchanged.
        assert!(matches!(
            limited(&mut m, "MGET a b c", 100),
            Reply::Array(_)
        ));
        assert_eq!(limited(&mut m, "SET c 1", 10), Reply::ok());
        assert!(matches!(run(&mut m, "GET big"), Reply::Bulk(v) if v.len() == 1000));
    }

    #[test]
    fn oom_past_the_limit_but_reads_work() {
        let mut m = fresh();
        m.max_bytes = 1024;
        let big = "x".repeat(300);
        assert_eq!(run(&mut m, &format!("SET a {big}")), Reply::ok());
        assert_eq!(run(&mut m, &format!("SET b {big}")), Reply::err(OOM));
        assert_eq!(run(&mut m, "INCR n"), Reply::Integer(1));
        assert!(matches!(run(&mut m, "GET a"), Reply::Bulk(_)));
        assert!(m.used() <= 1024);
    }
}
