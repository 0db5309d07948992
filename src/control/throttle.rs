//! Counting the control plane's throttled answers. The SDK retries a
//! `ThrottlingException` with backoff on its own, so a failure is never
//! seen for most of them; an interceptor looks at every answer before it
//! is decoded and counts the throttled ones, for the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_iot::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_iot::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_iot::error::BoxError;

/// The throttled answers of one control-plane client, every attempt counted.
#[derive(Debug, Clone, Default)]
pub(super) struct ThrottleCount(Arc<AtomicU64>);

impl ThrottleCount {
    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for ThrottleCount {
    fn name(&self) -> &'static str {
        "ThrottleCount"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let error_type = context.response().headers().get("x-amzn-errortype");
        // The header may carry a `:<namespace>` suffix after the code.
        if error_type.is_some_and(|t| t.starts_with("ThrottlingException")) {
            self.0.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fleetsim_control_plane_throttled_total").increment(1);
        }
        Ok(())
    }
}
