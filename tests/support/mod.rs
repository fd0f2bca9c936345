//! The harness for end-to-end tests: real servers on free loopback ports,
//! killed for real.
//!
//! A test crate in `tests/` includes it with `mod support;` and then reads
//! like a sentence:
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! let mut redis = RedisPair::start();       // primary + replica, linked
//! let pg = PgPair::start();                 // primary + streaming standby
//! let neo = ArcadeDb::start();              // a real Bolt server
//! redis.primary.kill();                     // SIGKILL, the port refuses
//! ```
//!
//! - Every server picks its ports with [`free_port`] (bind `127.0.0.1:0`),
//!   keeps its data and log in a tempdir (`$TMPDIR/continuity-test-KIND-*`),
//!   and is SIGKILLed (PostgreSQL: `pg_ctl stop -m immediate`) when its value
//!   is dropped, so a failing test leaves nothing behind. If the whole test
//!   process is killed before its Drops run, the next test process that
//!   starts a server kills those orphans and removes their dirs
//!   ([`proc::sweep_orphans`]). The machine's own Redis (6379) and
//!   PostgreSQL (5432) are never touched.
//! - Everything here is blocking (std threads, `std::process`). In a
//!   `#[tokio::test]` that also runs the proxy, use
//!   `#[tokio::test(flavor = "multi_thread")]` or `spawn_blocking`, so that
//!   a blocking wait does not stall the proxy on the same thread.
//! - Start costs measured here (2 cores, other builds running): a Redis pair
//!   0.1-0.2 s, a PostgreSQL pair 1-8 s (initdb + basebackup + streaming),
//!   an ArcadeDB 2-8 s (a JVM). Start one PostgreSQL pair per test and do
//!   all that test's steps on it; start the servers a test needs on
//!   parallel threads (`std::thread::scope`) when it needs several.
//! - Failure messages quote the tail of the server's log.
//!
//! Modules: [`ports`] (free ports, waiting), [`proc`] (child guard, kill by
//! PID), [`redis`], [`postgres`], [`arcadedb`], [`etcd`] (an N-member etcd
//! cluster, `EtcdCluster::start(3)`), [`writer`] (a Redis writer counting
//! its acknowledged writes), [`python`] (a real client library in a Python
//! process, driven line by line).

// Shared by several test crates, each using a different part of it.
#![allow(dead_code)]

pub mod arcadedb;
pub mod continuity;
pub mod etcd;
pub mod http_client;
pub mod http_upstream;
pub mod ports;
pub mod postgres;
pub mod proc;
pub mod python;
pub mod redis;
pub mod writer;

// The flat re-exports are for `use support::*`; each crate uses some.
#[allow(unused_imports)]
pub use arcadedb::{bolt_handshake, ArcadeDb, ARCADEDB_DATABASE, ARCADEDB_PASSWORD, ARCADEDB_USER};
#[allow(unused_imports)]
pub use etcd::EtcdCluster;
#[allow(unused_imports)]
pub use ports::{
    free_port, loopback, port_is_open, wait_for_port, wait_for_port_closed, wait_until,
};
#[allow(unused_imports)]
pub use postgres::{psql, try_psql, PgPair, PgServer};
#[allow(unused_imports)]
pub use proc::{kill_pid, kill_tree, nofile_soft_limit, pid_alive, ChildGuard};
#[allow(unused_imports)]
pub use redis::{redis_call, redis_cmd, RedisError, RedisOptions, RedisPair, RedisServer, Resp};
