//! Active health checks: one protocol-aware probe per kind behind the
//! [`HealthCheck`] trait (pingora's `HealthCheck` shape), plus the
//! promotion commands used by `on_failover = "promote"`.
//!
//! A probe never panics and never hangs: [`run_probe`] bounds it by the
//! service's `timeout_ms`, and every network or protocol error becomes a
//! failed [`ProbeOutcome`] with a readable `error`.
//!
//! Kinds: redis, postgres, neo4j (Bolt), http and elasticsearch
//! ([`http`], over TLS via [`tls`] for `https://` URLs), websocket
//! ([`websocket`]), and a TCP connect for the rest.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Kind, ServiceConfig, UpstreamConfig};

pub mod bolt;
pub mod http;
pub mod postgres;
pub mod redis;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod websocket;

/// The replication role a probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObservedRole {
    /// Accepts writes (redis `master`, postgres not in recovery).
    Primary,
    /// Read-only replica (redis `slave`, postgres in recovery).
    Replica,
}

/// Why a probe failed, classified for passive/active detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Connection refused or reset: certain evidence the upstream is down.
    Refused,
    /// No answer within the deadline.
    Timeout,
    /// It accepts TCP connections, but answered nothing within the probe's
    /// deadline: busy or hung, told apart by `busy_grace_ms`
    /// (upstream/probe.rs).
    Unanswered,
    /// Authentication was rejected.
    Auth,
    /// The peer answered something we did not expect.
    Protocol,
    /// Any other I/O error (DNS, unreachable, ...).
    Io,
}

/// The result of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// Wall time of the probe (connect included).
    #[serde(serialize_with = "ser_ms")]
    pub latency: Duration,
    /// Replication role, where the protocol tells it (redis, postgres).
    pub role: Option<ObservedRole>,
    /// Human-readable error; `None` when ok.
    pub error: Option<String>,
    pub failure: Option<FailureKind>,
    /// Ok but degraded (elasticsearch `yellow`), with the reason. Counts as
    /// a good probe that marks the upstream slow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl ProbeOutcome {
    pub fn success(latency: Duration, role: Option<ObservedRole>) -> ProbeOutcome {
        ProbeOutcome {
            ok: true,
            latency,
            role,
            error: None,
            failure: None,
            degraded: None,
        }
    }

    /// A good probe that saw what `probed` says (role, degradation).
    pub fn probed(latency: Duration, probed: Probed) -> ProbeOutcome {
        ProbeOutcome {
            degraded: probed.degraded,
            ..ProbeOutcome::success(latency, probed.role)
        }
    }

    pub fn failed(
        latency: Duration,
        failure: FailureKind,
        error: impl Into<String>,
    ) -> ProbeOutcome {
        ProbeOutcome {
            ok: false,
            latency,
            role: None,
            error: Some(error.into()),
            failure: Some(failure),
            degraded: None,
        }
    }
}

/// Errors inside a probe or a promotion; turned into a failed outcome.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The upstream answered, and said it is not healthy (HTTP non-2xx,
    /// elasticsearch `red`). Classified as [`FailureKind::Protocol`].
    #[error("{0}")]
    Unhealthy(String),
    #[error("timed out")]
    Timeout,
    /// Redis `-BUSY` (a script running) or `-LOADING` (the dataset is
    /// loading): alive, as Sentinel counts them.
    #[error("busy: {0}")]
    Busy(String),
}

impl ProbeError {
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            ProbeError::Io(e) => classify_io(e),
            ProbeError::Auth(_) => FailureKind::Auth,
            ProbeError::Protocol(_) | ProbeError::Unhealthy(_) | ProbeError::Busy(_) => {
                FailureKind::Protocol
            }
            ProbeError::Timeout => FailureKind::Timeout,
        }
    }
}

/// Refused/reset/aborted connects are certain evidence (SPEC 3 passive detection).
pub fn classify_io(e: &std::io::Error) -> FailureKind {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            FailureKind::Refused
        }
        TimedOut | WouldBlock => FailureKind::Timeout,
        _ => FailureKind::Io,
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a good probe saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probed {
    /// Replication role, where the protocol tells it (redis, postgres).
    pub role: Option<ObservedRole>,
    /// Serving but degraded (elasticsearch `yellow`), with the reason.
    pub degraded: Option<String>,
}

impl Probed {
    /// Up, nothing more to say.
    pub fn up() -> Probed {
        Probed::default()
    }

    /// Up, in `role`.
    pub fn role(role: ObservedRole) -> Probed {
        Probed {
            role: Some(role),
            degraded: None,
        }
    }

    /// Up but degraded, for `reason`.
    pub fn degraded(reason: impl Into<String>) -> Probed {
        Probed {
            role: None,
            degraded: Some(reason.into()),
        }
    }
}

/// What a probe of one kind does. Implementations return what they saw on
/// success; timing and the deadline are applied by [`run_probe`].
pub trait HealthCheck: Send + Sync {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>>;
}

/// The probe for a kind (`tcp` and kinds without a protocol probe use a
/// TCP connect).
pub fn checker_for(kind: Kind) -> &'static dyn HealthCheck {
    match kind {
        Kind::Redis => &redis::RedisCheck,
        Kind::Postgres => &postgres::PostgresCheck,
        Kind::Neo4j => &bolt::BoltCheck,
        Kind::Http => &http::HttpCheck,
        Kind::Elasticsearch => &http::ElasticsearchCheck,
        Kind::Websocket => &websocket::WebSocketCheck,
        Kind::Tcp | Kind::Heartbeat => &tcp::TcpCheck,
    }
}

/// Runs one probe bounded by `service.health.timeout`. A probe that ran
/// out of time is told apart by one more TCP connect: accepted means the
/// upstream is there but silent ([`FailureKind::Unanswered`]: busy or
/// hung), refused or timed out means it is not.
pub async fn run_probe(service: &ServiceConfig, upstream: &UpstreamConfig) -> ProbeOutcome {
    let started = Instant::now();
    let check = checker_for(service.kind).check(service, upstream);
    match tokio::time::timeout(service.health.timeout, check).await {
        Ok(Ok(probed)) => ProbeOutcome::probed(started.elapsed(), probed),
        Ok(Err(e)) => ProbeOutcome::failed(started.elapsed(), e.failure_kind(), e.to_string()),
        Err(_) => {
            let timeout_ms = service.health.timeout.as_millis();
            let accepts = connect(service, upstream).await.is_ok();
            let latency = started.elapsed();
            if accepts {
                ProbeOutcome::failed(
                    latency,
                    FailureKind::Unanswered,
                    format!(
                        "probe timed out after {timeout_ms} ms; it accepts connections (unanswered: busy or hung)"
                    ),
                )
            } else {
                ProbeOutcome::failed(
                    latency,
                    FailureKind::Timeout,
                    format!("probe timed out after {timeout_ms} ms"),
                )
            }
        }
    }
}

/// Makes `upstream` writable (`on_failover = "promote"`): redis
/// `REPLICAOF NO ONE`, postgres `SELECT pg_promote()`. Other kinds have no
/// promotion and succeed at once.
pub async fn promote(service: &ServiceConfig, upstream: &UpstreamConfig) -> Result<(), ProbeError> {
    let fut = async {
        match service.kind {
            Kind::Redis => redis::promote(service, upstream).await,
            Kind::Postgres => postgres::promote(service, upstream).await,
            _ => Ok(()),
        }
    };
    // Promotion may wait for a postgres standby to leave recovery: allow more than a probe.
    let limit = service.health.timeout.max(Duration::from_secs(10));
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| ProbeError::Timeout)?
}

/// Connects to `upstream` within the service's connect timeout.
pub async fn connect(
    service: &ServiceConfig,
    upstream: &UpstreamConfig,
) -> Result<tokio::net::TcpStream, ProbeError> {
    let target = upstream.target();
    match tokio::time::timeout(
        service.health.connect_timeout,
        tokio::net::TcpStream::connect(target.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ProbeError::Io(e)),
        Err(_) => Err(ProbeError::Timeout),
    }
}
