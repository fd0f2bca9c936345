//! One running generation of a service as the engine holds it: the
//! service's runtime, its stop switch, the listening socket it hands to
//! the next generation, and the redis memory fallback it carries over.

use std::sync::Arc;

use tokio::sync::watch;

use crate::fallback::Fallback;
use crate::upstream::service::ServiceRt;

/// One running generation of a service: its stop switch (probes, accept
/// loop, held clients) and the listening socket it shares with the next.
pub(crate) struct Slot {
    pub svc: Arc<ServiceRt>,
    pub stop: watch::Sender<bool>,
    pub listener: Option<std::net::TcpListener>,
    /// redis `fallback = "memory"`: the store its accept loop serves from.
    pub fallback: Option<Arc<Fallback>>,
}

/// A bound listener: the socket kept by the engine and the accept loop's
/// duplicate of it.
pub(crate) type Bound = (std::net::TcpListener, tokio::net::TcpListener);

/// A listener made ready by a reload before any step is applied.
pub(crate) enum Prepared {
    /// A new service's listener, and the address it bound.
    Bound((Bound, std::net::SocketAddr)),
    /// A replaced service's accept-loop duplicate of its listener.
    Dup(tokio::net::TcpListener),
}
