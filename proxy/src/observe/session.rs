//! What a Redis client connection has set on its server, followed from the
//! commands the relay's RESP observer already reads, so that an idle
//! connection can be re-attached to another upstream at a failover instead
//! of being closed (issue #18 item 3; docs/clients.md).
//!
//! Replayed on the new upstream, in the order the client last sent them:
//! `AUTH`, `HELLO`, `SELECT`, `CLIENT SETNAME`, `CLIENT SETINFO` (one per
//! attribute). Anything else that changes what the server remembers for
//! the connection makes it ineligible for good ([`STICKY`], plus the
//! commands after which the observer stops: `SUBSCRIBE`, `PSUBSCRIBE`,
//! `SSUBSCRIBE`, `MONITOR`, `SYNC`, `PSYNC`, `CLIENT REPLY`, RESP3 push
//! frames). `MULTI` and `WATCH` make it ineligible until `EXEC`,
//! `DISCARD` or `UNWATCH`. `RESET` forgets the replay list and the
//! transaction, not the sticky reasons.

use std::collections::VecDeque;

use crate::protocol::resp::{parse_command, CommandLimits};

/// Bytes kept of one command to replay (a longer one makes the connection
/// ineligible).
pub const FRAME_MAX: usize = 1024;
/// Distinct commands kept to replay.
const REPLAY_MAX: usize = 8;

/// Commands (name, or name and subcommand) whose effect on the connection
/// cannot be replayed.
const STICKY: &[(&[u8], &[u8])] = &[
    (b"CLIENT", b"TRACKING"),
    (b"CLIENT", b"CACHING"),
    (b"CLIENT", b"NO-EVICT"),
    (b"CLIENT", b"NO-TOUCH"),
    (b"CLIENT", b"REPLY"),
    (b"READONLY", b""),
    (b"READWRITE", b""),
    (b"ASKING", b""),
    (b"REPLCONF", b""),
];

/// The replayable state of one client connection, and why it may not be
/// re-attached if it may not.
#[derive(Default, Debug, Clone)]
pub struct Session {
    /// (key, the command as the client sent it), oldest first: the
    /// commands the server accepted.
    replay: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sent and not answered yet, in order (`None`: one not kept, which
    /// already made the connection ineligible).
    unanswered: VecDeque<Option<(Vec<u8>, Vec<u8>)>>,
    multi: bool,
    watching: bool,
    sticky: Option<&'static str>,
}

impl Session {
    /// One whole command the client sent: `name` and `sub` upper-cased
    /// (`sub` empty when not kept), `frame` its bytes if they were kept
    /// (`None`: not kept, or longer than [`FRAME_MAX`]). `true`: a command
    /// to replay, kept only if the server accepts it; its reply is to be
    /// passed to [`Session::answered`].
    pub(crate) fn command(&mut self, name: &[u8], sub: &[u8], frame: Option<&[u8]>) -> bool {
        match name {
            b"MULTI" => self.multi = true,
            b"EXEC" | b"DISCARD" => {
                self.multi = false;
                self.watching = false;
            }
            b"WATCH" => self.watching = true,
            b"UNWATCH" => self.watching = false,
            b"RESET" => {
                self.replay.clear();
                // What was sent before RESET and is still unanswered is
                // reset by it too.
                for u in self.unanswered.iter_mut() {
                    *u = None;
                }
                self.multi = false;
                self.watching = false;
            }
            b"AUTH" | b"HELLO" | b"SELECT" => {
                let kept = self.remember(frame);
                self.unanswered.push_back(kept);
                return true;
            }
            b"CLIENT" if sub == b"SETNAME" || sub == b"SETINFO" => {
                let kept = self.remember(frame);
                self.unanswered.push_back(kept);
                return true;
            }
            _ => {
                if STICKY
                    .iter()
                    .any(|(n, s)| *n == name && (s.is_empty() || *s == sub))
                {
                    self.stop("a command whose effect cannot be replayed");
                }
            }
        }
        false
    }

    /// The reply to the oldest command [`Session::command`] returned `true`
    /// for: accepted (`ok`), it joins the replay list, replacing an earlier
    /// one of its kind; refused, it had no effect and is forgotten (a
    /// client may send what its server does not know, as redis-py sends
    /// `CLIENT SETINFO` to servers older than 7.2).
    pub(crate) fn answered(&mut self, ok: bool) {
        let Some(Some((key, frame))) = self.unanswered.pop_front() else {
            return;
        };
        if !ok {
            return;
        }
        self.replay.retain(|(k, _)| *k != key);
        if self.replay.len() >= REPLAY_MAX {
            return self.stop("too many connection-state commands");
        }
        self.replay.push((key, frame));
    }

    /// The observer stopped following the connection (subscribe, monitor,
    /// replication, `CLIENT REPLY`, push frames, bytes it did not read).
    pub(crate) fn stop(&mut self, why: &'static str) {
        self.sticky.get_or_insert(why);
    }

    /// The (key, frame) of a command to replay, once accepted.
    fn remember(&mut self, frame: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.multi {
            // Queued, maybe discarded: not known to have taken effect.
            self.stop("connection state changed inside MULTI");
            return None;
        }
        let Some(frame) = frame else {
            self.stop("a connection-state command too long to replay");
            return None;
        };
        let limits = CommandLimits {
            max_command: FRAME_MAX,
            max_args: 16,
        };
        let args = match parse_command(frame, &limits) {
            Ok(Some((args, used))) if used == frame.len() && !args.is_empty() => args,
            _ => {
                self.stop("a connection-state command not understood");
                return None;
            }
        };
        // CLIENT SETNAME keeps one value, CLIENT SETINFO one per attribute.
        let is = |i: usize, w: &[u8]| args.get(i).is_some_and(|a| a.eq_ignore_ascii_case(w));
        let parts = match (is(0, b"CLIENT"), is(1, b"SETINFO")) {
            (true, true) => 3,
            (true, false) => 2,
            _ => 1,
        };
        let key: Vec<u8> = args
            .iter()
            .take(parts)
            .flat_map(|a| a.iter().map(u8::to_ascii_uppercase).chain([b' ']))
            .collect();
        Some((key, frame.to_vec()))
    }

    /// Why the connection may not be re-attached now, if it may not
    /// (replies outstanding are the observer's to tell).
    pub fn ineligible(&self) -> Option<&'static str> {
        if let Some(why) = self.sticky {
            return Some(why);
        }
        if self.multi {
            return Some("in MULTI");
        }
        if self.watching {
            return Some("WATCH in effect");
        }
        None
    }

    /// The commands to send a new upstream connection first, in order.
    pub fn replay(&self) -> impl Iterator<Item = &[u8]> {
        self.replay.iter().map(|(_, f)| f.as_slice())
    }

    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::protocol::resp::write_command;

    fn send(s: &mut Session, args: &[&str]) {
        let mut frame = Vec::new();
        write_command(args, &mut frame);
        let up = |a: Option<&&str>| a.map(|a| a.to_ascii_uppercase()).unwrap_or_default();
        let name = up(args.first());
        let sub = if name == "CLIENT" {
            up(args.get(1))
        } else {
            String::new()
        };
        if s.command(name.as_bytes(), sub.as_bytes(), Some(&frame)) {
            s.answered(true);
        }
    }

    fn replayed(s: &Session) -> Vec<String> {
        s.replay()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    #[test]
    fn keeps_the_last_of_each_in_order() {
        let mut s = Session::default();
        send(&mut s, &["AUTH", "u", "p"]);
        send(&mut s, &["SELECT", "2"]);
        send(&mut s, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]);
        send(&mut s, &["CLIENT", "SETINFO", "LIB-VER", "8"]);
        send(&mut s, &["GET", "k"]);
        send(&mut s, &["SELECT", "3"]);
        send(&mut s, &["client", "setname", "app"]);
        assert_eq!(s.ineligible(), None);
        assert_eq!(s.replay_len(), 5);
        let r = replayed(&s);
        assert!(r[0].contains("AUTH"));
        assert!(r[1].contains("LIB-NAME"));
        assert!(r[2].contains("LIB-VER"));
        assert!(r[3].contains("SELECT\r\n$1\r\n3"), "{r:?}");
        assert!(r[4].contains("setname"));
    }

    #[test]
    fn transactions_and_watch_are_not_idle_until_they_end() {
        let mut s = Session::default();
        send(&mut s, &["WATCH", "k"]);
        assert_eq!(s.ineligible(), Some("WATCH in effect"));
        send(&mut s, &["MULTI"]);
        assert_eq!(s.ineligible(), Some("in MULTI"));
        send(&mut s, &["EXEC"]);
        assert_eq!(s.ineligible(), None);
        send(&mut s, &["WATCH", "k"]);
        send(&mut s, &["UNWATCH"]);
        assert_eq!(s.ineligible(), None);
        send(&mut s, &["MULTI"]);
        send(&mut s, &["SELECT", "1"]);
        send(&mut s, &["DISCARD"]);
        assert!(s.ineligible().is_some(), "SELECT queued in MULTI");
    }

    #[test]
    fn state_that_cannot_be_replayed_is_sticky() {
        for cmd in [
            &["CLIENT", "TRACKING", "on"][..],
            &["CLIENT", "REPLY", "OFF"],
            &["READONLY"],
            &["CLIENT", "NO-EVICT", "on"],
        ] {
            let mut s = Session::default();
            send(&mut s, cmd);
            assert!(s.ineligible().is_some(), "{cmd:?}");
            send(&mut s, &["RESET"]);
            assert!(s.ineligible().is_some(), "{cmd:?} survives RESET");
        }
        let mut s = Session::default();
        send(&mut s, &["SELECT", "1"]);
        send(&mut s, &["RESET"]);
        assert_eq!(s.replay_len(), 0);
        assert!(s.command(b"AUTH", b"", None));
        s.answered(true);
        assert!(s.ineligible().is_some(), "a state command not kept");
    }

    #[test]
    fn a_refused_command_is_not_replayed() {
        let mut s = Session::default();
        let frame = |args: &[&str]| {
            let mut f = Vec::new();
            write_command(args, &mut f);
            f
        };
        assert!(s.command(
            b"CLIENT",
            b"SETINFO",
            Some(&frame(&["CLIENT", "SETINFO", "LIB-NAME", "x"]))
        ));
        assert!(s.command(b"SELECT", b"", Some(&frame(&["SELECT", "1"]))));
        s.answered(false);
        s.answered(true);
        assert_eq!(replayed(&s).len(), 1);
        assert!(replayed(&s)[0].contains("SELECT"));
        assert_eq!(s.ineligible(), None);
    }
}
