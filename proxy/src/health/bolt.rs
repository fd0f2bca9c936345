//! bolt probe (to be written).
use super::{BoxFuture, HealthCheck, ObservedRole, ProbeError};
use crate::config::{ServiceConfig, UpstreamConfig};

pub struct BoltCheck;

impl HealthCheck for BoltCheck {
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
