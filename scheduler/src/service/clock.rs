//! ClockService: how `greenfill sim replay` moves a scheduler started with
//! `--virtual-clock`. The planning loop does not run on timers then: a round runs
//! inside the Advance that reaches its time, after every connected node's
//! telemetry for that time has arrived, so a replay plans on the same inputs
//! every time it runs.

use super::{State, auth, planning, ts};
use greenfill_proto::v1 as pb;
use greenfill_runtime::clock;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long an Advance waits for the nodes' telemetry (wall time).
const TELEMETRY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Clock {
    st: Arc<State>,
    /// When the next round is due, and when the carbon signal was last
    /// refreshed; also serialises advances.
    next_round: tokio::sync::Mutex<(i64, i64)>,
}

impl Clock {
    pub fn new(st: Arc<State>) -> Clock {
        Clock { st, next_round: tokio::sync::Mutex::new((i64::MIN, clock::now())) }
    }

    /// Until every node with an open session has a sample stamped `at` or later.
    async fn wait_for_telemetry(&self, at: i64) -> Result<(), Status> {
        let deadline = std::time::Instant::now() + TELEMETRY_WAIT;
        loop {
            let behind: Vec<String> = {
                let inner = self.st.lock();
                inner
                    .nodes
                    .iter()
                    .filter(|(_, n)| n.session.is_some())
                    .filter(|(_, n)| {
                        n.last_sample.as_ref().and_then(|s| s.time.as_ref()).is_none_or(|t| t.seconds < at)
                    })
                    .map(|(name, _)| name.clone())
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "advance.telemetry_at = {at}: no sample that recent from {} after {TELEMETRY_WAIT:?}",
                    behind.join(", ")
                )));
            }
            // Waiting for messages on the wire, not for the virtual time.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Whether a round was asked for since the last one (takes the permit).
fn asked(replan: &tokio::sync::Notify) -> bool {
    use std::future::Future;
    let mut notified = std::pin::pin!(replan.notified());
    // A stored permit completes the first poll (and is taken by it).
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    notified.as_mut().poll(&mut cx).is_ready()
}

#[tonic::async_trait]
impl pb::clock_service_server::ClockService for Clock {
    async fn advance(&self, req: Request<pb::AdvanceRequest>) -> Result<Response<pb::AdvanceResponse>, Status> {
        if !auth::Caller::of(&req)?.admin {
            return Err(Status::permission_denied("only an admin moves the clock"));
        }
        let req = req.into_inner();
        let to = req.to.ok_or_else(|| Status::invalid_argument("advance.to: missing"))?.seconds;
        let mut guard = self.next_round.lock().await;
        let (next, carbon_at) = &mut *guard;
        let now = clock::advance(to).map_err(Status::failed_precondition)?;
        if let Some(at) = req.telemetry_at {
            self.wait_for_telemetry(at.seconds).await?;
        }
        super::carbon::refresh_due(&self.st, carbon_at, now).await;
        let mut out = pb::AdvanceResponse { now: Some(ts(now)), ..pb::AdvanceResponse::default() };
        // An event (a registration, a job's exit) asks for a round soon, as
        // in `planning::run`: at this advance.
        if !req.hold && (now >= *next || (!req.interval_only && asked(&self.st.replan))) {
            let round = planning::plan_once(&self.st).await.map_err(|e| Status::internal(format!("{e:#}")))?;
            let interval = i64::try_from(self.st.config.planning.interval.as_secs()).unwrap_or(60).max(1);
            *next = now + interval;
            out.planned = true;
            out.dispatched = u32::try_from(round.dispatched).unwrap_or(u32::MAX);
            out.power_transitions = u32::try_from(round.power_transitions).unwrap_or(u32::MAX);
        }
        let inner = self.st.lock();
        out.last_command_seq = inner.nodes.iter().map(|(name, n)| (name.clone(), n.durable_seq)).collect();
        Ok(Response::new(out))
    }
}
