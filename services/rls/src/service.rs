//! The `envoy.service.ratelimit.v3.RateLimitService` implementation.

use crate::config::{Config, RedisFailure};
use crate::limiter::{self, plan};
use crate::metrics::Metrics;
use crate::store::Store;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub struct Service {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub redis_failure: RedisFailure,
    /// Add `RateLimit-Policy` / `RateLimit` headers to responses.
    pub headers: bool,
}

impl Service {
    pub async fn decide(&self, req: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let plan = plan(&self.config, req);
        let counters = self.metrics.domain(&req.domain);
        counters.requests.fetch_add(1, Relaxed);
        if plan.items.is_empty() {
            counters.ok.fetch_add(1, Relaxed);
            return Ok(limiter::all_unlimited(&plan));
        }
        match self.store.evaluate(&plan).await {
            Ok(outcome) => {
                let (response, shadow_over) = limiter::respond(&plan, &outcome, self.headers);
                counters.shadow_over_limit.fetch_add(shadow_over, Relaxed);
                if response.overall_code == Code::Ok as i32 {
                    counters.ok.fetch_add(1, Relaxed);
                } else {
                    counters.over_limit.fetch_add(1, Relaxed);
                }
                Ok(response)
            }
            Err(e) => {
                counters.redis_errors.fetch_add(1, Relaxed);
                match self.redis_failure {
                    RedisFailure::Allow => {
                        counters.failure_allowed.fetch_add(1, Relaxed);
                        counters.ok.fetch_add(1, Relaxed);
                        Ok(limiter::failure_answer(&plan, true))
                    }
                    RedisFailure::Deny => {
                        counters.failure_denied.fetch_add(1, Relaxed);
                        counters.over_limit.fetch_add(1, Relaxed);
                        Ok(limiter::failure_answer(&plan, false))
                    }
                    RedisFailure::Error => {
                        counters.failure_error.fetch_add(1, Relaxed);
                        Err(Status::unavailable(format!(
                            "rate limit store unavailable: {e}"
                        )))
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for Service {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let result = self.decide(request.get_ref()).await;
        self.metrics.observe(started.elapsed());
        result.map(Response::new)
    }
}
