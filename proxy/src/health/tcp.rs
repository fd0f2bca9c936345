//! `tcp` (and fallback) probe: a connect within the timeout.

use super::{BoxFuture, HealthCheck, ProbeError, Probed};
use crate::config::{ServiceConfig, UpstreamConfig};

pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Probed, ProbeError>> {
        Box::pin(async move {
            super::connect(service, upstream).await?;
            Ok(Probed::up())
        })
    }
}
