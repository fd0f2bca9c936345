//! continuity-control: the control plane (axum): REST, WebSockets,
//! `/metrics`, and later the operations page and the audit log. It sees the
//! data plane only through `continuity_proxy::Engine`.

pub mod config;
