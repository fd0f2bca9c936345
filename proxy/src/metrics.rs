//! Data-plane metric names and handles. The registry is passed in (never a
//! global), and per-upstream handles are resolved once at start so the hot
//! path only touches atomics. Control-plane gauges derived from snapshots
//! (`continuity_service_up`, `continuity_failover_state`, ...) live in the
//! control crate.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub mod names {
    pub const HEALTH_CHECKS_TOTAL: &str = "continuity_health_checks_total";
    pub const PROBE_LATENCY_SECONDS: &str = "continuity_probe_latency_seconds";
    pub const INLINE_LATENCY_SECONDS: &str = "continuity_inline_latency_seconds";
    pub const FAILOVERS_TOTAL: &str = "continuity_failovers_total";
    pub const RECOVERY_SECONDS: &str = "continuity_recovery_seconds";
    pub const CONNECTIONS_TOTAL: &str = "continuity_proxy_connections_total";
    pub const ACTIVE_CONNECTIONS: &str = "continuity_proxy_active_connections";
    pub const BYTES_TOTAL: &str = "continuity_proxy_bytes_total";
    pub const HELD_TOTAL: &str = "continuity_held_clients_total";
    pub const HOLD_TIMEOUTS_TOTAL: &str = "continuity_hold_timeouts_total";
    pub const PASSIVE_FAILURES_TOTAL: &str = "continuity_passive_failures_total";
    pub const POOL_TAKES_TOTAL: &str = "continuity_pool_takes_total";
    /// Redis client connections whose upstream moved or went away, by
    /// `outcome`: `reattached`, `ineligible` (closed: not idle, or state
    /// that cannot be replayed), `failed` (closed: the server had closed it
    /// on purpose, no upstream in time, or the replay was refused).
    pub const REATTACHED_TOTAL: &str = "continuity_reattached_connections_total";
    /// By `listener`: a service name, or `control` for the control plane.
    pub const CONNECTIONS_REFUSED_TOTAL: &str = "continuity_connections_refused_total";
    pub const HTTP_REQUESTS_TOTAL: &str = "continuity_http_requests_total";
    pub const HTTP_REQUEST_SECONDS: &str = "continuity_http_request_duration_seconds";
    pub const HTTP_RETRIES_TOTAL: &str = "continuity_http_retries_total";
    pub const HTTP_QUEUE_DEPTH: &str = "continuity_http_queue_depth";
    pub const HTTP_QUEUE_OLDEST_SECONDS: &str = "continuity_http_queue_oldest_age_seconds";
    pub const HTTP_QUEUE_BYTES: &str = "continuity_http_queue_bytes";
    pub const HTTP_QUEUE_DELIVERIES_TOTAL: &str = "continuity_http_queue_deliveries_total";
}

/// `continuity_http_retries_total{reason}`: every reason the gateway
/// counts (proxy/src/gateway/proxy/ and h1/).
pub const HTTP_RETRY_REASONS: [&str; 4] = ["connect", "http_5xx", "upstream_error", "rate_limited"];

/// `continuity_http_queue_deliveries_total{result}` (proxy/src/gateway/deliver.rs).
pub const HTTP_QUEUE_DELIVERY_RESULTS: [&str; 3] = ["delivered", "failed", "retried"];

/// Latency buckets in seconds, from 50 us to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct ProxyMetrics {
    pub health_checks: IntCounterVec,
    pub probe_latency: HistogramVec,
    pub inline_latency: HistogramVec,
    pub failovers: IntCounterVec,
    pub recovery_seconds: HistogramVec,
    pub connections: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub bytes: IntCounterVec,
    pub held: IntCounterVec,
    pub hold_timeouts: IntCounterVec,
    pub passive_failures: IntCounterVec,
    pub pool_takes: IntCounterVec,
    pub reattached: IntCounterVec,
    /// Connections refused past a listener's cap, by `listener` (a service
    /// name, or `control`).
    pub connections_refused: IntCounterVec,
    /// The HTTP gateway's own series (proxy/src/gateway).
    pub http: HttpMetrics,
}

/// Series of the HTTP gateway.
#[derive(Clone)]
pub struct HttpMetrics {
    /// By service, route (its path_prefix, or "/"), outcome (proxied,
    /// queued, held_timeout, rejected, failed, rate_limited) and status class.
    pub requests: IntCounterVec,
    /// Whole request time as the client saw it, by service and route.
    pub duration: HistogramVec,
    /// Retries by service, upstream tried before, and reason.
    pub retries: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest: prometheus::GaugeVec,
    /// Request-body bytes of the queued requests not yet delivered (what
    /// `queue_max_bytes` bounds).
    pub queue_bytes: IntGaugeVec,
    /// Queued requests finished, by result (delivered, failed, retried).
    pub queue_deliveries: IntCounterVec,
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    if let Err(e) = reg.register(Box::new(g.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    g
}

impl HttpMetrics {
    fn new(reg: &Registry) -> HttpMetrics {
        use names::*;
        let oldest = prometheus::GaugeVec::new(
            Opts::new(
                HTTP_QUEUE_OLDEST_SECONDS,
                "Age of the oldest undelivered queued HTTP request (0 when none).",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| panic!("metric {HTTP_QUEUE_OLDEST_SECONDS} is malformed: {e}"));
        if let Err(e) = reg.register(Box::new(oldest.clone())) {
            tracing::warn!(metric = HTTP_QUEUE_OLDEST_SECONDS, error = %e, "metric not registered");
        }
        HttpMetrics {
            requests: counter(
                reg,
                HTTP_REQUESTS_TOTAL,
                "HTTP requests through the gateway, by route, outcome and status class.",
                &["service", "route", "outcome", "class"],
            ),
            duration: histogram(
                reg,
                HTTP_REQUEST_SECONDS,
                "HTTP request time through the gateway as the client saw it, by route.",
                &["service", "route"],
            ),
            retries: counter(
                reg,
                HTTP_RETRIES_TOTAL,
                "HTTP requests retried, by the upstream that failed and why.",
                &["service", "upstream", "reason"],
            ),
            queue_depth: gauge_vec(
                reg,
                HTTP_QUEUE_DEPTH,
                "Queued HTTP requests not yet delivered.",
                &["service"],
            ),
            queue_oldest: oldest,
            queue_bytes: gauge_vec(
                reg,
                HTTP_QUEUE_BYTES,
                "Request-body bytes of the queued HTTP requests not yet delivered.",
                &["service"],
            ),
            queue_deliveries: counter(
                reg,
                HTTP_QUEUE_DELIVERIES_TOTAL,
                "Delivery attempts of queued HTTP requests, by result.",
                &["service", "result"],
            ),
        }
    }
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    // Registration fails only on a duplicate name: a programming error that
    // tests catch; the metric still works unregistered.
    if let Err(e) = reg.register(Box::new(c.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    if let Err(e) = reg.register(Box::new(h.clone())) {
        tracing::warn!(metric = name, error = %e, "metric not registered");
    }
    h
}

impl ProxyMetrics {
    pub fn new(reg: &Registry) -> ProxyMetrics {
        use names::*;
        let active = IntGaugeVec::new(
            Opts::new(
                ACTIVE_CONNECTIONS,
                "Client connections open now, held ones included.",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| panic!("metric {ACTIVE_CONNECTIONS} is malformed: {e}"));
        if let Err(e) = reg.register(Box::new(active.clone())) {
            tracing::warn!(metric = ACTIVE_CONNECTIONS, error = %e, "metric not registered");
        }
        ProxyMetrics {
            health_checks: counter(
                reg,
                HEALTH_CHECKS_TOTAL,
                "Active probes by result (success or failure).",
                &["service", "upstream", "result"],
            ),
            probe_latency: histogram(
                reg,
                PROBE_LATENCY_SECONDS,
                "Active probe latency.",
                &["service", "upstream"],
            ),
            inline_latency: histogram(
                reg,
                INLINE_LATENCY_SECONDS,
                "Latency seen in the request path: upstream connect, and time to first response byte per request.",
                &["service", "upstream", "phase"],
            ),
            failovers: counter(
                reg,
                FAILOVERS_TOTAL,
                "Switches away from the active upstream, by trigger (auto or manual).",
                &["service", "trigger"],
            ),
            recovery_seconds: histogram(
                reg,
                RECOVERY_SECONDS,
                "Time from the active upstream going down to traffic flowing to another.",
                &["service"],
            ),
            connections: counter(
                reg,
                CONNECTIONS_TOTAL,
                "Client connections proxied to an upstream.",
                &["service", "upstream"],
            ),
            active_connections: active,
            bytes: counter(
                reg,
                BYTES_TOTAL,
                "Bytes proxied, by direction (to_upstream or to_client).",
                &["service", "upstream", "direction"],
            ),
            held: counter(
                reg,
                HELD_TOTAL,
                "Client connections held because no upstream was usable.",
                &["service"],
            ),
            reattached: counter(
                reg,
                REATTACHED_TOTAL,
                "Redis client connections whose upstream moved or went away, by outcome (reattached, ineligible, failed).",
                &["service", "outcome"],
            ),
            hold_timeouts: counter(
                reg,
                HOLD_TIMEOUTS_TOTAL,
                "Held clients refused after buffer_timeout_ms.",
                &["service"],
            ),
            connections_refused: counter(
                reg,
                CONNECTIONS_REFUSED_TOTAL,
                "Connections refused because the listener was at its connection cap (max_connections), by listener (a service, or control).",
                &["listener"],
            ),
            pool_takes: counter(
                reg,
                POOL_TAKES_TOTAL,
                "Client connections to a hot standby, by result: hit (a ready connection was used) or miss.",
                &["service", "upstream", "result"],
            ),
            passive_failures: counter(
                reg,
                PASSIVE_FAILURES_TOTAL,
                "Failed upstream connects seen in real traffic, by upstream and reason: refused and timeout (each a probe failure), http_error, and congested (an L4 connect that timed out while others to the same upstream succeeded: its listen backlog was full; not counted against its health).",
                &["service", "upstream", "reason"],
            ),
            http: HttpMetrics::new(reg),
        }
    }

    /// Creates every labelled series of a service at zero, so that a
    /// dashboard or an alert rule sees `0`, not an absent series, before
    /// the first failover or timeout.
    pub fn touch_service(&self, service: &str, upstreams: &[&str]) {
        for trigger in ["auto", "manual"] {
            self.failovers.with_label_values(&[service, trigger]);
        }
        self.recovery_seconds.with_label_values(&[service]);
        self.held.with_label_values(&[service]);
        self.hold_timeouts.with_label_values(&[service]);
        self.active_connections.with_label_values(&[service]);
        for up in upstreams {
            for result in ["success", "failure"] {
                self.health_checks.with_label_values(&[service, up, result]);
            }
            for reason in ["refused", "timeout"] {
                self.passive_failures
                    .with_label_values(&[service, up, reason]);
            }
            self.probe_latency.with_label_values(&[service, up]);
            for result in ["hit", "miss"] {
                self.pool_takes.with_label_values(&[service, up, result]);
            }
        }
    }

    /// The same for an HTTP gateway service: its retries per upstream and
    /// reason, and, when `queues` (some route has `on_outage = "queue"`),
    /// its queue deliveries per result.
    pub fn touch_http_service(&self, service: &str, upstreams: &[&str], queues: bool) {
        for up in upstreams {
            for reason in HTTP_RETRY_REASONS {
                self.http.retries.with_label_values(&[service, up, reason]);
            }
        }
        if queues {
            for result in HTTP_QUEUE_DELIVERY_RESULTS {
                self.http
                    .queue_deliveries
                    .with_label_values(&[service, result]);
            }
        }
    }

    pub fn for_upstream(&self, service: &str, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            connect: self
                .inline_latency
                .with_label_values(&[service, upstream, "connect"]),
            response: self
                .inline_latency
                .with_label_values(&[service, upstream, "response"]),
            connections: self.connections.with_label_values(&[service, upstream]),
            bytes_up: self
                .bytes
                .with_label_values(&[service, upstream, "to_upstream"]),
            bytes_down: self
                .bytes
                .with_label_values(&[service, upstream, "to_client"]),
        }
    }
}

/// Pre-resolved handles for one upstream.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub connect: prometheus::Histogram,
    pub response: prometheus::Histogram,
    pub connections: IntCounter,
    pub bytes_up: IntCounter,
    pub bytes_down: IntCounter,
}
