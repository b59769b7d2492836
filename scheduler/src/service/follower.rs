//! A follower's gRPC server: health says NOT_SERVING (a readiness probe keeps
//! the Service off it), reflection answers, and every other call is refused
//! with `UNAVAILABLE`, naming the leader in the message and in the
//! `greenfill-leader` metadata (clients retry there).
//!
//! The listening socket is kept when this replica starts to lead: connections
//! wait in its backlog while the leader's server starts.

use super::leader::Lease;
use futures_util::StreamExt;
use greenfill_proto::v1::agent_service_server::AgentServiceServer;
use greenfill_proto::v1::job_service_server::JobServiceServer;
use greenfill_proto::v1::plan_service_server::PlanServiceServer;
use greenfill_runtime::CancellationToken;
use std::sync::Arc;

/// The metadata key naming the leader's address in a follower's refusal.
pub const LEADER_KEY: &str = "greenfill-leader";

/// How long open calls (health watches) keep a follower's server from stopping.
const GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug)]
pub struct Serving {
    stop: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    listener: Arc<tokio::net::TcpListener>,
}

/// The refusal of a call to a follower.
pub fn refusal(lease: &Lease) -> tonic::Status {
    let h = lease.seen.borrow().clone();
    let msg = if h.live && !h.address.is_empty() {
        format!("this scheduler replica is a follower; the leader is {} (epoch {})", h.address, h.epoch)
    } else {
        "this scheduler replica is a follower and no leader holds the lease now; retry shortly".to_owned()
    };
    let mut status = tonic::Status::unavailable(msg);
    if h.live
        && let Ok(v) = h.address.parse()
    {
        status.metadata_mut().insert(LEADER_KEY, v);
    }
    status
}

impl Serving {
    pub async fn start(
        config: &super::Config,
        listener: tokio::net::TcpListener,
        lease: Arc<Lease>,
    ) -> anyhow::Result<Serving> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        health.set_not_serving::<JobServiceServer<super::jobs::Jobs>>().await;
        health.set_not_serving::<PlanServiceServer<super::jobs::Plans>>().await;
        health.set_not_serving::<AgentServiceServer<super::agents::Agents>>().await;
        let (v1, v1alpha) = super::reflection()?;
        let routes = tonic::service::Routes::new(health_service).add_service(v1).add_service(v1alpha);
        let app = routes.into_axum_router().fallback(move || {
            let status = refusal(&lease);
            async move { status.into_http::<tonic::body::Body>() }
        });
        let listener = Arc::new(listener);
        let l = listener.clone();
        let incoming = futures_util::stream::unfold(l, |l| async move {
            let accepted = l.accept().await.inspect(|(s, _)| drop(s.set_nodelay(true))).map(|(s, _)| s);
            Some((accepted, l))
        })
        .boxed();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            super::server_builder(config)?
                .add_routes(tonic::service::Routes::from(app))
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        tracing::info!(addr = %listener.local_addr()?, "following: serving health and reflection, refusing the rest");
        Ok(Serving { stop, server, listener })
    }

    /// Stop serving; the listening socket back if no one else holds it.
    pub async fn stop(self) -> Option<tokio::net::TcpListener> {
        let Serving { stop, mut server, listener } = self;
        stop.cancel();
        if tokio::time::timeout(GRACE, &mut server).await.is_err() {
            server.abort();
            let _ = server.await;
        }
        Arc::try_unwrap(listener).ok()
    }
}
