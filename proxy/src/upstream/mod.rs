//! Upstream state.
