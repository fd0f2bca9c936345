//! Upstreams: their runtime health, the failover state machine, and the
//! lock-free latency window used on the hot path.

pub mod failover;
pub mod latency;
pub mod pool;
pub mod resync;
pub mod runtime;
pub mod switchover;
