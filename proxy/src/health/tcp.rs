//! `tcp` (and fallback) probe: a connect within the timeout.

use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError};
use crate::config::{ServiceConfig, UpstreamConfig};

pub struct TcpCheck;

impl HealthCheck for TcpCheck {
    fn check<'a>(
        &'a self,
        service: &'a ServiceConfig,
        upstream: &'a UpstreamConfig,
    ) -> BoxFuture<'a, Result<Option<ObservedRole>, ProbeError>> {
        Box::pin(async move {
            super::connect(service, upstream).await?;
            Ok(None)
        })
    }
}
