//! `switchyard-rls`: a global rate limit service speaking Envoy's RLS v3 gRPC API
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), counting in Redis.
//!
//! - [`config`]: domains in envoyproxy/ratelimit's YAML format, validated at load, and
//!   descriptor matching.
//! - [`limiter`]: the plan (which descriptors carry a limit), the Lua script (fixed windows,
//!   all-or-nothing, quota leasing; one round trip), the response.
//! - [`store`]: Redis with short timeouts and automatic reconnection.
//! - [`service`]: the gRPC service; [`http`]: `/healthz`, `/readyz`, `/metrics`.
//!
//! See `docs/global.md`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod config;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod service;
pub mod store;

use config::{Config, RedisFailure};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything the service needs to run (the CLI builds it).
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub redis_url: String,
    pub redis_failure: RedisFailure,
    pub timeouts: store::Timeouts,
    pub headers: bool,
}

/// Binds both ports, then serves until `shutdown` resolves (in-flight calls finish).
pub async fn run(
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let grpc = tokio::net::TcpListener::bind(options.grpc_addr)
        .await
        .map_err(|e| format!("cannot listen on --grpc-addr {}: {e}", options.grpc_addr))?;
    let http = tokio::net::TcpListener::bind(options.http_addr)
        .await
        .map_err(|e| format!("cannot listen on --http-addr {}: {e}", options.http_addr))?;
    let store = store::Store::connect(&options.redis_url, options.timeouts)?;
    let metrics = Arc::new(metrics::Metrics::new(options.config.domains.keys()));
    let http_task = tokio::spawn(http::serve(http, store.clone(), metrics.clone()));
    let svc = service::Service {
        config: Arc::new(options.config),
        store,
        metrics,
        redis_failure: options.redis_failure,
        headers: options.headers,
    };
    eprintln!(
        "switchyard-rls: gRPC on {}, HTTP on {}, Redis {}, redis_failure {}",
        options.grpc_addr,
        options.http_addr,
        options.redis_url,
        options.redis_failure.as_str()
    );
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(RateLimitServiceServer::new(svc))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"));
    http_task.abort();
    eprintln!("switchyard-rls: stopped");
    result
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("switchyard-rls: shutting down");
}

/// A descriptor of `(key, value)` entries, as a client builds one for `ShouldRateLimit`.
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}
