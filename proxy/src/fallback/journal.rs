//! The write journal of the fallback, and its replay to Redis.
//!
//! Every write the fallback accepts is journaled as an *absolute*,
//! idempotent operation (an `INCR` as the `SET` of the value it returned),
//! so a replay cut short by a dropped connection can simply be sent again.
//! Each op carries the key's expiry as an `Instant`; at replay the TTL left
//! becomes a `PX`/`PEXPIRE`, and a key whose TTL ran out is deleted instead.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::resp::{parse_reply, write_command, Reply, MAX_REPLY};

/// Bytes counted per journaled op besides its keys and values.
pub const OP_OVERHEAD: usize = 48;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        expires: Option<Instant>,
    },
    Del {
        keys: Vec<Vec<u8>>,
    },
    Expire {
        key: Vec<u8>,
        at: Instant,
    },
    HSet {
        key: Vec<u8>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        expires: Option<Instant>,
    },
    HDel {
        key: Vec<u8>,
        fields: Vec<Vec<u8>>,
    },
}

impl Op {
    pub fn size(&self) -> usize {
        OP_OVERHEAD
            + match self {
                Op::Set { key, value, .. } => key.len() + value.len(),
                Op::Del { keys } => keys.iter().map(Vec::len).sum(),
                Op::Expire { key, .. } => key.len(),
                Op::HSet { key, pairs, .. } => {
                    key.len() + pairs.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()
                }
                Op::HDel { key, fields } => key.len() + fields.iter().map(Vec::len).sum::<usize>(),
            }
    }

    /// The Redis commands that apply this op at `now`, and whether its key
    /// had expired (then the command is a `DEL`).
    pub fn commands(&self, now: Instant) -> (Vec<Vec<Vec<u8>>>, bool) {
        let left = |t: &Instant| {
            let ms = t.saturating_duration_since(now).as_millis();
            (ms > 0).then(|| ms.to_string().into_bytes())
        };
        let b = |s: &str| s.as_bytes().to_vec();
        match self {
            Op::Set {
                key,
                value,
                expires,
            } => match expires.as_ref().map(left) {
                None => (vec![vec![b("SET"), key.clone(), value.clone()]], false),
                Some(Some(ms)) => (
                    vec![vec![b("SET"), key.clone(), value.clone(), b("PX"), ms]],
                    false,
                ),
                Some(None) => (vec![vec![b("DEL"), key.clone()]], true),
            },
            Op::Del { keys } => {
                let mut c = vec![b("DEL")];
                c.extend(keys.iter().cloned());
                (vec![c], false)
            }
            Op::Expire { key, at } => match left(at) {
                Some(ms) => (vec![vec![b("PEXPIRE"), key.clone(), ms]], false),
                None => (vec![vec![b("DEL"), key.clone()]], true),
            },
            Op::HSet {
                key,
                pairs,
                expires,
            } => {
                let ttl = expires.as_ref().map(left);
                if ttl == Some(None) {
                    return (vec![vec![b("DEL"), key.clone()]], true);
                }
                let mut c = vec![b("HSET"), key.clone()];
                for (f, v) in pairs {
                    c.push(f.clone());
                    c.push(v.clone());
                }
                let mut cmds = vec![c];
                if let Some(Some(ms)) = ttl {
                    cmds.push(vec![b("PEXPIRE"), key.clone(), ms]);
                }
                (cmds, false)
            }
            Op::HDel { key, fields } => {
                let mut c = vec![b("HDEL"), key.clone()];
                c.extend(fields.iter().cloned());
                (vec![c], false)
            }
        }
    }
}

/// Journaled ops in the order they were accepted.
#[derive(Debug, Default)]
pub struct Journal {
    ops: VecDeque<Op>,
    bytes: usize,
}

impl Journal {
    pub fn push(&mut self, op: Op) {
        self.bytes += op.size();
        self.ops.push_back(op);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Takes up to `max` ops from the front.
    pub fn take(&mut self, max: usize) -> Vec<Op> {
        let n = max.min(self.ops.len());
        let out: Vec<Op> = self.ops.drain(..n).collect();
        self.bytes = self.bytes.saturating_sub(out.iter().map(Op::size).sum());
        out
    }

    /// Puts ops that were not acknowledged back at the front, in order.
    pub fn restore(&mut self, ops: Vec<Op>) {
        for op in ops.into_iter().rev() {
            self.bytes += op.size();
            self.ops.push_front(op);
        }
    }
}

/// What a replayed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Ops Redis acknowledged.
    pub replayed: u64,
    /// Of those, ops whose key had expired (sent as `DEL`).
    pub expired: u64,
    /// Ops Redis answered with an error (e.g. `WRONGTYPE`): not retried.
    pub failed: u64,
}

/// A connection to the recovered Redis that sends ops in order.
pub struct Replayer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Replayer {
    pub fn new(stream: TcpStream) -> Replayer {
        Replayer {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one command and reads its reply.
    pub async fn request(&mut self, args: &[Vec<u8>]) -> std::io::Result<Reply> {
        let mut out = Vec::new();
        write_command(args, &mut out);
        self.stream.write_all(&out).await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> std::io::Result<Reply> {
        let mut chunk = [0u8; 4096];
        loop {
            match parse_reply(&self.buf) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used.min(self.buf.len()));
                    return Ok(reply);
                }
                Ok(None) if self.buf.len() <= MAX_REPLY => {}
                Ok(None) => return Err(std::io::Error::other("reply too large")),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Pipelines `ops` in order and reads every reply. On an I/O error the
    /// ops from the first unacknowledged one on are returned with it.
    pub async fn replay(
        &mut self,
        ops: Vec<Op>,
    ) -> Result<Counts, (Counts, Vec<Op>, std::io::Error)> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut plan = Vec::with_capacity(ops.len());
        for op in &ops {
            let (cmds, expired) = op.commands(now);
            plan.push((cmds.len(), expired));
            for c in &cmds {
                write_command(c, &mut out);
            }
        }
        let mut counts = Counts::default();
        if let Err(e) = self.stream.write_all(&out).await {
            return Err((counts, ops, e));
        }
        for (i, (n, expired)) in plan.iter().enumerate() {
            let mut failed = false;
            for _ in 0..*n {
                match self.read_reply().await {
                    Ok(Reply::Error(msg)) => {
                        tracing::warn!(error = %msg, "fallback replay: redis refused a journaled write");
                        failed = true;
                    }
                    Ok(_) => {}
                    Err(e) => return Err((counts, ops.into_iter().skip(i).collect(), e)),
                }
            }
            if failed {
                counts.failed += 1;
            } else {
                counts.replayed += 1;
                counts.expired += u64::from(*expired);
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn ops_become_commands() {
        let now = Instant::now();
        let set = Op::Set {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            expires: Some(now + Duration::from_millis(1500)),
        };
        let (c, expired) = set.commands(now);
        assert!(!expired);
        assert_eq!(c[0][3], b"PX".to_vec());
        assert_eq!(c[0][4], b"1500".to_vec());
        let (c, expired) = set.commands(now + Duration::from_secs(2));
        assert!(expired);
        assert_eq!(c, vec![vec![b"DEL".to_vec(), b"k".to_vec()]]);
        let h = Op::HSet {
            key: b"h".to_vec(),
            pairs: vec![(b"f".to_vec(), b"v".to_vec())],
            expires: Some(now + Duration::from_secs(5)),
        };
        assert_eq!(h.commands(now).0.len(), 2);
    }

    #[test]
    fn journal_take_and_restore_keep_order_and_bytes() {
        let mut j = Journal::default();
        for i in 0..5u8 {
            j.push(Op::Del {
                keys: vec![vec![i]],
            });
        }
        let total = j.bytes();
        let first = j.take(3);
        assert_eq!(j.len(), 2);
        j.restore(first);
        assert_eq!(j.bytes(), total);
        let all = j.take(10);
        assert_eq!(
            all[0],
            Op::Del {
                keys: vec![vec![0]]
            }
        );
        assert_eq!(
            all[4],
            Op::Del {
                keys: vec![vec![4]]
            }
        );
        assert!(j.is_empty());
        assert_eq!(j.bytes(), 0);
    }
}
