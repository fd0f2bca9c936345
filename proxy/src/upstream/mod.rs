//! Upstreams: the run-time state of each service ([`service::ServiceRt`]),
//! the failover state machine ([`failover`], pure) and everything that
//! drives it: probe accounting, the automatic decision, switch execution,
//! planned switchovers, resynchronisation, warm pools, and the lock-free
//! latency window used on the hot path.

pub mod failover;
pub mod latency;
pub mod pool;
pub mod resync;
pub mod runtime;
pub mod switchover;

pub(crate) mod evaluate;
pub(crate) mod probe;
pub(crate) mod service;
pub(crate) mod state;
pub(crate) mod switch;
pub(crate) mod uptime;
pub(crate) mod warm;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod harness_tests;
