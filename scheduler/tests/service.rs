//! The scheduler service in process, over real gRPC on loopback with a real
//! SQLite file: validation at the edge, auth, limits, idempotency, durability
//! across restarts, and the agent protocol's exactly-once rules.

use greenfill_proto::v1 as pb;
use greenfill_scheduler::service::{self, Config, config::PoolDecl};
use pb::agent_service_client::AgentServiceClient;
use pb::job_service_client::JobServiceClient;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const USER: &str = "user-secret";
const AGENT: &str = "agent-secret";

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        user_tokens: vec![USER.into()],
        agent_tokens: vec![AGENT.into()],
        pools: vec![PoolDecl {
            name: "web".into(),
            cores: 16.0,
            memory_gib: 64.0,
            gpus: 0,
            power: None,
            zone: None,
            embodied_g_per_hour: 0.0,
            gpu_busy_w: None,
            gpu_idle_w: None,
        }],
        ..Config::default()
    };
    c.planning.interval = Duration::from_millis(200);
    c.planning.min_gap = Duration::from_millis(50);
    c.validate("test").unwrap();
    c
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn spec() -> pb::JobSpec {
    pb::JobSpec {
        name: "etl".into(),
        command: vec!["true".into()],
        cpu_cores: 1.0,
        memory_bytes: 1 << 30,
        expected_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        ..Default::default()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn ts(t: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t, nanos: 0 })
}

async fn count_jobs(jobs: &mut JobServiceClient<Channel>) -> usize {
    let r = jobs.list_jobs(authed(USER, pb::ListJobsRequest { page_size: 1000, ..Default::default() })).await.unwrap();
    r.into_inner().jobs.len()
}

#[tokio::test]
async fn every_invalid_field_is_refused_by_name_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    type Edit = Box<dyn Fn(&mut pb::SubmitJobRequest)>;
    let s = |f: fn(&mut pb::JobSpec)| -> Edit { Box::new(move |r| f(r.spec.as_mut().unwrap())) };
    let cases: Vec<(&str, Edit)> = vec![
        ("request_id", Box::new(|r| r.request_id.clear())),
        ("request_id", Box::new(|r| r.request_id = "x".repeat(129))),
        ("spec", Box::new(|r| r.spec = None)),
        ("spec.command", s(|s| s.command.clear())),
        ("spec.command", s(|s| s.command = vec![String::new()])),
        ("spec.command", s(|s| s.command = vec!["x".repeat(70_000)])),
        ("spec.command", s(|s| s.command = vec!["a\0b".into()])),
        ("spec.cpu_cores", s(|s| s.cpu_cores = -1.0)),
        ("spec.cpu_cores", s(|s| s.cpu_cores = 0.0)),
        ("spec.cpu_cores", s(|s| s.cpu_cores = f64::NAN)),
        ("spec.cpu_cores", s(|s| s.cpu_cores = 17.0)),
        ("spec.memory_bytes", s(|s| s.memory_bytes = 0)),
        ("spec.memory_bytes", s(|s| s.memory_bytes = 65 << 30)),
        ("spec.gpus", s(|s| s.gpus = 1)),
        ("spec.expected_duration", s(|s| s.expected_duration = None)),
        ("spec.expected_duration", s(|s| s.expected_duration = Some(prost_types::Duration { seconds: 0, nanos: 0 }))),
        ("spec.expected_duration", s(|s| s.expected_duration = Some(prost_types::Duration { seconds: -5, nanos: 0 }))),
        (
            "spec.expected_duration",
            s(|s| s.expected_duration = Some(prost_types::Duration { seconds: 31 * 86_400, nanos: 0 })),
        ),
        ("spec.deadline", s(|s| s.deadline = ts(now() - 10))),
        ("spec.deadline", s(|s| s.deadline = ts(now() + 30))),
        (
            "spec.deadline",
            s(|s| {
                s.not_before = ts(now() + 3600);
                s.deadline = ts(now() + 3610);
            }),
        ),
        ("spec.pool", s(|s| s.pool = "nope".into())),
        (
            "spec.env",
            s(|s| {
                s.env.insert("BIG".into(), "x".repeat(70_000));
            }),
        ),
        (
            "spec.env",
            s(|s| {
                s.env.insert("A=B".into(), "1".into());
            }),
        ),
        ("spec.working_dir", s(|s| s.working_dir = "relative/dir".into())),
        ("spec.run_as_uid", s(|s| s.run_as_uid = Some(0))),
        ("spec.run_as_gid", s(|s| s.run_as_gid = Some(0))),
        (
            "spec.labels",
            s(|s| {
                s.labels.insert(String::new(), "v".into());
            }),
        ),
        ("spec.name", s(|s| s.name = "n".repeat(254))),
    ];
    for (i, (field, edit)) in cases.iter().enumerate() {
        let mut req = pb::SubmitJobRequest { request_id: format!("bad-{i}"), spec: Some(spec()) };
        edit(&mut req);
        let err = jobs.submit_job(authed(USER, req)).await.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "case {i} ({field}): {err:?}");
        assert!(
            err.message().starts_with(&format!("{field} = ")),
            "case {i}: message {:?} should name {field}",
            err.message()
        );
    }
    assert_eq!(count_jobs(&mut jobs).await, 0, "a refused submission was stored");
    // The same spec, valid, is accepted: the table above tests the fields, not a broken base.
    let ok =
        jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: "good".into(), spec: Some(spec()) })).await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn tokens_are_required_and_users_and_agents_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let req = || pb::SubmitJobRequest { request_id: "r".into(), spec: Some(spec()) };
    let e = jobs.submit_job(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = jobs.submit_job(authed("wrong", req())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = jobs.submit_job(authed(AGENT, req())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "an agent token must not submit jobs: {e:?}");
    let mut agents = AgentServiceClient::new(ch.clone());
    let e = agents.session(authed(USER, tokio_stream::iter(vec![]))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "a user token must not open an agent session: {e:?}");
    assert_eq!(count_jobs(&mut jobs).await, 0);

    // Health and reflection are open, for probes and generic tools.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "greenfill.v1.JobService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn oversized_messages_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let mut s = spec();
    s.labels.insert("blob".into(), "x".repeat(2 << 20));
    let e = jobs
        .submit_job(authed(USER, pb::SubmitJobRequest { request_id: "big".into(), spec: Some(s) }))
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{e:?}");
    assert_eq!(count_jobs(&mut jobs).await, 0);
}

#[tokio::test]
async fn submit_is_idempotent_and_durable_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let req = || pb::SubmitJobRequest { request_id: "same".into(), spec: Some(spec()) };
    let a = jobs.submit_job(authed(USER, req())).await.unwrap().into_inner();
    let b = jobs.submit_job(authed(USER, req())).await.unwrap().into_inner();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.job.as_ref().unwrap().id, b.job.as_ref().unwrap().id);
    for i in 0..250 {
        let r = pb::SubmitJobRequest { request_id: format!("r{i}"), spec: Some(spec()) };
        jobs.submit_job(authed(USER, r)).await.unwrap();
    }
    srv.stop().await.unwrap();
    drop(jobs);

    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let c = jobs.submit_job(authed(USER, req())).await.unwrap().into_inner();
    assert!(c.duplicate, "the request id survives a restart");
    assert_eq!(c.job.unwrap().id, a.job.unwrap().id);
    // Paginated listing, oldest first, sees every job once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = jobs
            .list_jobs(authed(USER, pb::ListJobsRequest { page_size: 100, page_token: token, ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.jobs.into_iter().map(|j| j.id));
        token = r.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 251);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 251, "a job listed twice");
    assert_eq!(sorted, seen, "uuid v7 ids in submission order");
}

/// A watch that starts after a change (the compacted replay) carries the state the
/// job left, as a live one does, before and after a restart: a client that reads,
/// then watches, then cancels cannot tell which of its calls the server ran first.
#[tokio::test]
async fn a_replayed_watch_event_carries_the_previous_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let req = pb::SubmitJobRequest { request_id: "w".into(), spec: Some(spec()) };
    let job = jobs.submit_job(authed(USER, req)).await.unwrap().into_inner().job.unwrap();
    let cancel = pb::CancelJobRequest { id: job.id.clone(), reason: "replayed".into() };
    jobs.cancel_job(authed(USER, cancel)).await.unwrap();
    let replayed = |mut jobs: JobServiceClient<Channel>, since: u64| async move {
        let watch = pb::WatchJobsRequest { ids: vec![], since_revision: since, ..Default::default() };
        let mut events = jobs.watch_jobs(authed(USER, watch)).await.unwrap().into_inner();
        tokio::time::timeout(Duration::from_secs(5), events.message()).await.unwrap().unwrap().unwrap()
    };
    let before = replayed(jobs.clone(), job.revision).await;
    assert_eq!(before.job.as_ref().unwrap().state, pb::JobState::Cancelled as i32);
    assert_eq!(before.previous_state, pb::JobState::Queued as i32, "{before:?}");
    srv.stop().await.unwrap();
    drop(jobs);

    let srv = service::start(config(dir.path())).await.unwrap();
    let jobs = JobServiceClient::new(channel(srv.addr).await);
    let after = replayed(jobs, job.revision).await;
    assert_eq!((after.revision, after.previous_state), (before.revision, before.previous_state), "{after:?}");
    srv.stop().await.unwrap();
}

/// A scripted agent: register, get a RunJob, report events; reconnect and replay.
#[tokio::test]
async fn agent_protocol_commands_and_events_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut s = spec();
    s.pool = "web".into();
    let job =
        jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: "a1".into(), spec: Some(s) })).await.unwrap();
    let id = job.into_inner().job.unwrap().id;

    let register = |last_command_seq| pb::AgentMessage {
        seq: 0,
        ack: 0,
        body: Some(pb::agent_message::Body::Register(pb::Register {
            node_name: "n1".into(),
            pool: "web".into(),
            cpu_cores: 16.0,
            memory_bytes: 64 << 30,
            last_command_seq,
            ..Default::default()
        })),
    };
    let telemetry = || pb::AgentMessage {
        seq: 0,
        ack: 0,
        body: Some(pb::agent_message::Body::Telemetry(pb::TelemetrySample {
            time: ts(now()),
            online_cpu_cores: Some(2.0),
            online_memory_bytes: Some(4 << 30),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(register(0)).await.unwrap();
    tx.send(telemetry()).await.unwrap();
    let mut agents = AgentServiceClient::new(ch.clone());
    let mut inbound =
        agents.session(authed(AGENT, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(first.body, Some(pb::scheduler_message::Body::RegisterAck(_))));
    let run = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = inbound.message().await.unwrap().unwrap();
            if let Some(pb::scheduler_message::Body::Run(r)) = m.body {
                return (m.seq, r);
            }
        }
    })
    .await
    .expect("a RunJob within 10 s");
    assert_eq!(run.1.job_id, id);
    let status = |seq, phase: pb::JobPhase, code| pb::AgentMessage {
        seq,
        ack: run.0,
        body: Some(pb::agent_message::Body::JobStatus(pb::JobStatus {
            job_id: id.clone(),
            attempt_id: run.1.attempt_id.clone(),
            phase: phase as i32,
            exit_code: code,
            ..Default::default()
        })),
    };
    tx.send(status(1, pb::JobPhase::Started, None)).await.unwrap();
    tx.send(status(2, pb::JobPhase::Exited, Some(0))).await.unwrap();
    let wait_acked = async |inbound: &mut tonic::Streaming<pb::SchedulerMessage>, seq| loop {
        let m = inbound.message().await.unwrap().unwrap();
        if m.ack >= seq {
            break;
        }
    };
    wait_acked(&mut inbound, 2).await;
    let get = async |jobs: &mut JobServiceClient<Channel>| {
        jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner()
    };
    let j = get(&mut jobs).await;
    assert_eq!(j.state, pb::JobState::Succeeded as i32, "{j:?}");
    assert_eq!(j.exit_code, Some(0));
    let rev = j.revision;
    drop(tx);
    drop(inbound);

    // Reconnect having applied the RunJob: it is not resent; a replayed event
    // (seq 2 again) changes nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(register(run.0)).await.unwrap();
    let mut inbound =
        agents.session(authed(AGENT, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let ack = match inbound.message().await.unwrap().unwrap().body {
        Some(pb::scheduler_message::Body::RegisterAck(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(ack.last_event_seq, 2, "the scheduler stored both events");
    tx.send(status(2, pb::JobPhase::Exited, Some(1))).await.unwrap();
    wait_acked(&mut inbound, 2).await;
    let again = tokio::time::timeout(Duration::from_millis(500), inbound.message()).await;
    if let Ok(Ok(Some(m))) = &again {
        assert!(
            !matches!(m.body, Some(pb::scheduler_message::Body::Run(_))),
            "RunJob resent after it was applied: {m:?}"
        );
    }
    let j = get(&mut jobs).await;
    assert_eq!(
        (j.state, j.exit_code, j.revision),
        (pb::JobState::Succeeded as i32, Some(0), rev),
        "a replayed event was applied twice"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_is_told_to_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.limits.requests_per_second = 5;
    c.limits.burst = 5;
    let srv = service::start(c).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = jobs.get_job(authed(USER, pb::GetJobRequest { id: "none".into() })).await;
        codes.push(r.unwrap_err().code());
    }
    assert_eq!(&codes[..5], &[Code::NotFound; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == Code::ResourceExhausted), "{codes:?}");
}

/// A node that goes silent: its job is requeued (with the reason), and when the
/// node comes back it is told to stop the old attempt.
#[tokio::test]
async fn jobs_of_a_silent_node_are_requeued_and_the_old_attempt_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.planning.stale_after = Duration::from_secs(2);
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let id = jobs
        .submit_job(authed(USER, pb::SubmitJobRequest { request_id: "s1".into(), spec: Some(spec()) }))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let register = pb::AgentMessage {
        seq: 0,
        ack: 0,
        body: Some(pb::agent_message::Body::Register(pb::Register {
            node_name: "quiet".into(),
            pool: "web".into(),
            cpu_cores: 16.0,
            memory_bytes: 64 << 30,
            ..Default::default()
        })),
    };
    let telemetry = pb::AgentMessage {
        seq: 0,
        ack: 0,
        body: Some(pb::agent_message::Body::Telemetry(pb::TelemetrySample {
            time: ts(now()),
            online_cpu_cores: Some(1.0),
            ..Default::default()
        })),
    };
    let mut agents = AgentServiceClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(register.clone()).await.unwrap();
    tx.send(telemetry).await.unwrap();
    let mut inbound =
        agents.session(authed(AGENT, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let run = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(pb::scheduler_message::Body::Run(r)) = inbound.message().await.unwrap().unwrap().body {
                return r;
            }
        }
    })
    .await
    .expect("dispatched");
    // Go silent (the session stays open but nothing more is sent).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let job = loop {
        let j = jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner();
        if j.state_reason.contains("silent") || tokio::time::Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(job.state_reason.contains("node quiet silent"), "{job:?}");
    assert!(job.node.is_empty() || job.attempts == 2, "{job:?}");
    drop(tx);
    drop(inbound);
    // Back again (having applied only the RunJob, seq 1): the StopJob for the old attempt arrives.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut again = register.clone();
    if let Some(pb::agent_message::Body::Register(r)) = &mut again.body {
        r.last_command_seq = 1;
    }
    tx.send(again).await.unwrap();
    let mut inbound =
        agents.session(authed(AGENT, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let stop = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(pb::scheduler_message::Body::Stop(s)) = inbound.message().await.unwrap().unwrap().body {
                return s;
            }
        }
    })
    .await
    .expect("a StopJob for the old attempt");
    assert_eq!((stop.job_id.as_str(), stop.attempt_id.as_str()), (id.as_str(), run.attempt_id.as_str()));
}

#[test]
fn the_example_config_lists_valid_keys() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scheduler.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.pools[0].name, "web");
    assert_eq!(c.planning.telemetry_retention, Duration::from_secs(14 * 86_400));
    assert_eq!(c.replication.lease, Duration::from_secs(15));
    assert_eq!(c.store, None);
    // A misspelt key is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "insecure_local = true\n[planning]\nintervall = \"5s\"\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("intervall"), "{e}");
    // Plans further apart than a slot would start jobs late.
    std::fs::write(&bad, "insecure_local = true\n[planning]\ninterval = \"10m\"\nslot = \"5m\"\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("planning.interval") && e.contains("planning.slot"), "{e}");
    assert_eq!(c.planning.delay_cost, 0.001);
    std::fs::write(&bad, "insecure_local = true\n[replication]\nlease = \"5s\"\nrenew_deadline = \"8s\"\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("replication.renew_deadline") && e.contains("8s"), "{e}");
    std::fs::write(&bad, "insecure_local = true\nstore = \"mysql://root:hunter2@db/x\"\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("store") && e.contains("postgres://") && !e.contains("hunter2"), "{e}");
    std::fs::write(&bad, "insecure_local = true\n[planning]\ndelay_cost = 2.0\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("planning.delay_cost") && e.contains('2'), "{e}");
    assert_eq!(c.planning.guard_slack, 0.05);
    std::fs::write(&bad, "insecure_local = true\n[planning]\nguard_slack = 0.75\n").unwrap();
    let e = Config::load(&bad).unwrap_err().to_string();
    assert!(e.contains("planning.guard_slack") && e.contains("0.75"), "{e}");
}

/// The loop measured in issue 15, reproduced: an agent that evicts every attempt
/// at once. The job backs off (1 s, then 2 s) between attempts and fails at its
/// third eviction with a reason that says so, instead of coming straight back.
#[tokio::test]
async fn an_evicted_job_backs_off_and_fails_at_the_retry_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.planning.eviction_backoff = Duration::from_secs(1);
    c.planning.max_evictions = 3;
    // One node: this test is about the job's backoff, not the node's cool-down.
    c.planning.eviction_cooldown = Duration::ZERO;
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut s = spec();
    s.pool = "web".into();
    let job = jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: "ev".into(), spec: Some(s) })).await;
    let id = job.unwrap().into_inner().job.unwrap().id;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let register = pb::Register {
        node_name: "n1".into(),
        pool: "web".into(),
        cpu_cores: 16.0,
        memory_bytes: 64 << 30,
        ..Default::default()
    };
    tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Register(register)) })
        .await
        .unwrap();
    let sample = pb::TelemetrySample { time: ts(now()), online_cpu_cores: Some(2.0), ..Default::default() };
    tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(sample)) }).await.unwrap();
    let mut agents = AgentServiceClient::new(ch.clone());
    let mut inbound =
        agents.session(authed(AGENT, tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let mut runs = Vec::new();
    let mut seq = 0;
    let started = std::time::Instant::now();
    while runs.len() < 4 && started.elapsed() < Duration::from_secs(12) {
        let Ok(m) = tokio::time::timeout(Duration::from_millis(500), inbound.message()).await else { continue };
        let m = m.unwrap().unwrap();
        let Some(pb::scheduler_message::Body::Run(r)) = m.body else { continue };
        runs.push(started.elapsed());
        for phase in [pb::JobPhase::Started, pb::JobPhase::Evicted] {
            seq += 1;
            let status = pb::JobStatus {
                job_id: id.clone(),
                attempt_id: r.attempt_id.clone(),
                phase: phase as i32,
                message: "node memory 93.0% > high 90%".into(),
                ..Default::default()
            };
            let body = Some(pb::agent_message::Body::JobStatus(status));
            tx.send(pb::AgentMessage { seq, ack: m.seq, body }).await.unwrap();
        }
    }
    assert_eq!(runs.len(), 3, "three attempts, then no more: {runs:?}");
    assert!(runs[1] - runs[0] >= Duration::from_secs(1), "backed off 1 s: {runs:?}");
    assert!(runs[2] - runs[1] >= Duration::from_secs(2), "then 2 s: {runs:?}");
    let j = jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner();
    assert_eq!(j.state, pb::JobState::Failed as i32, "{j:?}");
    assert_eq!(j.evictions, 3);
    assert!(j.state_reason.contains("evicted 3 times (planning.max_evictions = 3)"), "{}", j.state_reason);
}

/// A node that evicted cools down: the job's next attempt goes to the other
/// node, though the planner would pick the one that evicted first (same
/// forecast, first in order), instead of filling it again.
#[tokio::test]
async fn after_an_eviction_the_next_attempt_goes_to_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.planning.eviction_backoff = Duration::from_secs(1);
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let id = submit_web(&mut jobs, "cool", |s| s.memory_bytes = 2 << 30).await;
    let mut sessions = Vec::new();
    for name in ["n1", "n2"] {
        let FakeAgent { tx, inbound } = connect_agent(&ch, register(name, name, vec![], 0)).await.unwrap();
        sessions.push((name, tx, inbound));
    }
    // Whichever node gets the first attempt evicts it; the second attempt must
    // go to the other one.
    let mut runs: Vec<&str> = Vec::new();
    let started = std::time::Instant::now();
    while runs.len() < 2 && started.elapsed() < Duration::from_secs(15) {
        for (name, tx, inbound) in &mut sessions {
            let Ok(m) = tokio::time::timeout(Duration::from_millis(200), inbound.message()).await else { continue };
            let m = m.unwrap().unwrap();
            let Some(pb::scheduler_message::Body::Run(r)) = m.body else { continue };
            runs.push(name);
            let phases: &[pb::JobPhase] = if runs.len() == 1 {
                &[pb::JobPhase::Started, pb::JobPhase::Evicted]
            } else {
                &[pb::JobPhase::Started]
            };
            for (k, phase) in phases.iter().enumerate() {
                let status = pb::JobStatus {
                    job_id: id.clone(),
                    attempt_id: r.attempt_id.clone(),
                    phase: *phase as i32,
                    message: "node memory 93.0% > high 90%".into(),
                    ..Default::default()
                };
                let body = Some(pb::agent_message::Body::JobStatus(status));
                tx.send(pb::AgentMessage { seq: k as u64 + 1, ack: m.seq, body }).await.unwrap();
            }
        }
    }
    assert_eq!(runs.len(), 2, "two attempts: {runs:?}");
    assert_ne!(runs[0], runs[1], "the second attempt went back to the node that evicted: {runs:?}");
    let j = jobs.get_job(authed(USER, pb::GetJobRequest { id })).await.unwrap().into_inner();
    assert_eq!((j.state, j.evictions), (pb::JobState::Running as i32, 1), "{j:?}");
}

#[tokio::test]
async fn an_image_job_is_planned_with_its_pull_where_the_node_lacks_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // A pull as long as a slot: a one-slot job planned with it takes two.
    c.planning.image_pull_estimate = c.planning.slot;
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let warm = "registry.example/etl:1";
    let mut first = register("n1", "n1", vec![], 0);
    if let Some(pb::agent_message::Body::Register(r)) = first.body.as_mut() {
        r.images = vec![warm.into()];
    }
    let FakeAgent { tx, mut inbound } = connect_agent(&ch, first).await.unwrap();
    let image = |reference: &str| {
        Some(pb::ImageSpec {
            reference: reference.into(),
            pull_policy: pb::PullPolicy::IfNotPresent as i32,
            credential: String::new(),
        })
    };
    let mut explained = Vec::new();
    for (rid, reference) in [("warm", warm), ("cold", "registry.example/train:7")] {
        let id = submit_web(&mut jobs, rid, |s| s.image = image(reference)).await;
        let run = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.unwrap().unwrap().unwrap();
            if let Some(pb::scheduler_message::Body::Run(r)) = m.body {
                break r;
            }
        };
        assert_eq!(run.job_id, id);
        let e = jobs.explain_job(authed(USER, pb::ExplainJobRequest { id: id.clone() })).await.unwrap().into_inner();
        explained.push(e);
        // Started with a measured 42 s pull: the node holds the image now.
        let status = pb::JobStatus {
            job_id: id,
            attempt_id: run.attempt_id,
            phase: pb::JobPhase::Started as i32,
            image_pull_seconds: (reference != warm).then_some(42.0),
            ..Default::default()
        };
        tx.send(pb::AgentMessage {
            seq: explained.len() as u64,
            ack: 0,
            body: Some(pb::agent_message::Body::JobStatus(status)),
        })
        .await
        .unwrap();
    }
    let (w, cold) = (&explained[0], &explained[1]);
    assert!(!w.detail.contains("pulls image"), "the node holds it: {}", w.detail);
    assert!(cold.detail.contains("pulls image registry.example/train:7 first"), "{}", cold.detail);
    let ratio = cold.energy_kwh_estimate / w.energy_kwh_estimate;
    assert!((ratio - 2.0).abs() < 1e-9, "the pull's slot is in the cold job's run time: x{ratio}");
    // The next job of that image starts warm, with no pull in its plan.
    let again = submit_web(&mut jobs, "again", |s| s.image = image("registry.example/train:7")).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.unwrap().unwrap().unwrap();
        if matches!(m.body, Some(pb::scheduler_message::Body::Run(_))) {
            break;
        }
    }
    let e = jobs.explain_job(authed(USER, pb::ExplainJobRequest { id: again })).await.unwrap().into_inner();
    assert!(!e.detail.contains("pulls image"), "{}", e.detail);
    assert!((e.energy_kwh_estimate - w.energy_kwh_estimate).abs() < 1e-12);
}

#[tokio::test]
async fn a_start_that_may_pass_is_retried_with_backoff_and_fails_at_the_attempt_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.planning.eviction_backoff = Duration::from_millis(1);
    c.planning.max_start_attempts = 3;
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let retry = submit_web(&mut jobs, "retry", |_| {}).await;
    let FakeAgent { tx, mut inbound } = connect_agent(&ch, register("n1", "n1", vec![], 0)).await.unwrap();
    let mut seq = 0;
    let mut fail = async |id: &str, retryable: bool| {
        let run = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await.unwrap().unwrap().unwrap();
            if let Some(pb::scheduler_message::Body::Run(r)) = m.body {
                break r;
            }
        };
        assert_eq!(run.job_id, id);
        seq += 1;
        let status = pb::JobStatus {
            job_id: id.into(),
            attempt_id: run.attempt_id,
            phase: pb::JobPhase::FailedToStart as i32,
            message: "image r/x:1: registry: error sending request: connection refused".into(),
            retryable,
            ..Default::default()
        };
        tx.send(pb::AgentMessage { seq, ack: 0, body: Some(pb::agent_message::Body::JobStatus(status)) })
            .await
            .unwrap();
    };
    let get = async |jobs: &mut JobServiceClient<Channel>, id: &str| {
        jobs.get_job(authed(USER, pb::GetJobRequest { id: id.into() })).await.unwrap().into_inner()
    };
    fail(&retry, true).await;
    // Requeued with a backoff; run again; failed at its third attempt.
    fail(&retry, true).await;
    let j = get(&mut jobs, &retry).await;
    assert!(j.retry_after.is_some(), "{j:?}");
    fail(&retry, true).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let j = loop {
        let j = get(&mut jobs, &retry).await;
        if j.state == pb::JobState::Failed as i32 || std::time::Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((j.state, j.attempts), (pb::JobState::Failed as i32, 3), "{j:?}");
    assert!(
        j.state_reason.starts_with("failed to start 3 times (planning.max_start_attempts = 3)"),
        "{}",
        j.state_reason
    );
    // A cause that will not pass fails at once.
    let once = submit_web(&mut jobs, "once", |_| {}).await;
    fail(&once, false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let j = loop {
        let j = get(&mut jobs, &once).await;
        if j.state == pb::JobState::Failed as i32 || std::time::Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((j.state, j.attempts), (pb::JobState::Failed as i32, 1), "{j:?}");
}

#[tokio::test]
async fn image_references_and_pull_policies_are_checked_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let cases = [
        ("Upper/Case:1", 0, "", "spec.image.reference"),
        ("reg/x@sha256:abc", 0, "", "spec.image.reference"),
        ("reg/x:1", 7, "", "spec.image.pull_policy"),
        ("reg/x:1", 0, "../etc/passwd", "spec.image.credential"),
    ];
    for (k, (reference, policy, credential, field)) in cases.into_iter().enumerate() {
        let mut s = spec();
        s.image =
            Some(pb::ImageSpec { reference: reference.into(), pull_policy: policy, credential: credential.into() });
        let r =
            jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: format!("bad-{k}"), spec: Some(s) })).await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    // An image job may leave the command to the image.
    let mut s = spec();
    s.command.clear();
    s.image = Some(pb::ImageSpec {
        reference: "reg.example:5000/team/etl@sha256:".to_owned() + &"a".repeat(64),
        ..Default::default()
    });
    jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: "ok".into(), spec: Some(s) })).await.unwrap();
}

/// Submit `spec()` to pool `web` (edited by `edit`) as the shared user; its id.
async fn submit_web(jobs: &mut JobServiceClient<Channel>, rid: &str, edit: impl FnOnce(&mut pb::JobSpec)) -> String {
    let mut s = spec();
    s.pool = "web".into();
    edit(&mut s);
    let job = jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: rid.into(), spec: Some(s) })).await;
    job.unwrap().into_inner().job.unwrap().id
}

/// An agent session over a channel: what it sends and what it receives.
struct FakeAgent {
    tx: tokio::sync::mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::SchedulerMessage>,
}

fn register(node: &str, instance: &str, running: Vec<pb::RunningJob>, last_command_seq: u64) -> pb::AgentMessage {
    let register = pb::Register {
        node_name: node.into(),
        pool: "web".into(),
        cpu_cores: 16.0,
        memory_bytes: 64 << 30,
        instance_id: instance.into(),
        running_jobs: running,
        last_command_seq,
        ..Default::default()
    };
    pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Register(register)) }
}

async fn connect_agent(ch: &Channel, first: pb::AgentMessage) -> Result<FakeAgent, tonic::Status> {
    connect_agent_as(ch, AGENT, first).await
}

async fn connect_agent_as(ch: &Channel, token: &str, first: pb::AgentMessage) -> Result<FakeAgent, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(first).await.unwrap();
    let sample = pb::TelemetrySample { time: ts(now()), online_cpu_cores: Some(2.0), ..Default::default() };
    tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(sample)) }).await.unwrap();
    let mut agents = AgentServiceClient::new(ch.clone());
    let inbound = agents.session(authed(token, tokio_stream::wrappers::ReceiverStream::new(rx))).await?.into_inner();
    Ok(FakeAgent { tx, inbound })
}

impl FakeAgent {
    /// The next command of the kind `pick` accepts, within `within`.
    async fn next<T>(
        &mut self,
        within: Duration,
        pick: impl Fn(pb::scheduler_message::Body) -> Option<T>,
    ) -> Option<(u64, T)> {
        tokio::time::timeout(within, async {
            loop {
                let m = self.inbound.message().await.ok()??;
                if let Some(t) = m.body.and_then(&pick) {
                    return Some((m.seq, t));
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// Issue 19's duplicate: a second agent instance claiming a node whose session
/// is live is refused, naming the node and the other instance; the same
/// instance reconnecting replaces its old session, which is closed with the
/// reason.
#[tokio::test]
async fn a_second_instance_for_a_live_node_is_refused_and_a_reconnect_closes_the_old_session() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut first = connect_agent(&ch, register("n1", "instance-a", vec![], 0)).await.unwrap();
    let e =
        connect_agent(&ch, register("n1", "instance-b", vec![], 0)).await.err().expect("a second instance is refused");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(
        e.message().contains("node n1") && e.message().contains("instance-a") && e.message().contains("instance-b"),
        "{}",
        e.message()
    );
    let _again = connect_agent(&ch, register("n1", "instance-a", vec![], 0)).await.unwrap();
    let mut plans = pb::plan_service_client::PlanServiceClient::new(ch.clone());
    let nodes = plans.list_nodes(authed(USER, pb::ListNodesRequest::default())).await.unwrap().into_inner().nodes;
    let n1 = nodes.iter().find(|n| n.name == "n1").unwrap();
    assert_eq!(n1.agent_instance, "instance-a");
    assert!(n1.agent_address.starts_with("127.0.0.1:"), "{n1:?}");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    })
    .await
    .expect("the old session ends");
    let closed = closed.expect("with a status");
    assert_eq!(closed.code(), Code::Aborted, "{closed:?}");
    assert!(closed.message().contains("replaced by a newer session of node n1"), "{}", closed.message());
}

/// The audit log (issue 30): a refused duplicate agent and an admin's cancel
/// appear with who, when, from where and why; a viewer reads them and no one
/// else's jobs; they survive a restart.
#[tokio::test]
async fn the_audit_log_names_who_when_and_why_and_survives_a_restart() {
    use greenfill_scheduler::service::config::UserDecl;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = config(dir.path());
        let user = |name: &str, admin: bool, viewer: bool| UserDecl {
            name: name.into(),
            token: format!("{name}-secret"),
            uids: vec![],
            gids: vec![],
            admin,
            viewer,
        };
        c.users = vec![user("alice", false, false), user("ops", true, false), user("eve", false, true)];
        c.validate("test").unwrap();
        c
    };
    let before = now();
    let srv = service::start(cfg()).await.unwrap();
    let ch = channel(srv.addr).await;
    let _n1 = connect_agent(&ch, register("n1", "instance-a", vec![], 0)).await.unwrap();
    let e = connect_agent(&ch, register("n1", "instance-b", vec![], 0)).await.err().expect("refused");
    assert_eq!(e.code(), Code::AlreadyExists);
    let mut jobs = JobServiceClient::new(ch.clone());
    let submit = pb::SubmitJobRequest { request_id: "a1".into(), spec: Some(spec()) };
    let job = jobs.submit_job(authed("alice-secret", submit)).await.unwrap().into_inner().job.unwrap();
    let cancel = pb::CancelJobRequest { id: job.id.clone(), reason: "maintenance window".into() };
    jobs.cancel_job(authed("ops-secret", cancel)).await.unwrap();
    let audit = |ch: Channel, token: &'static str, subject: &str| {
        let mut plans = pb::plan_service_client::PlanServiceClient::new(ch);
        let r = pb::ListAuditRequest { subject: subject.into(), ..Default::default() };
        async move { plans.list_audit(authed(token, r)).await.map(|r| r.into_inner().entries) }
    };
    let check = |entries: &[pb::AuditEntry]| {
        let kinds: Vec<(&str, &str, bool)> =
            entries.iter().map(|a| (a.kind.as_str(), a.subject.as_str(), a.accepted)).collect();
        assert_eq!(kinds, vec![("register", "n1", true), ("register", "n1", false), ("cancel", job.id.as_str(), true)]);
        let refused = &entries[1];
        assert!(refused.actor.contains("instance-b") && refused.address.starts_with("127.0.0.1:"), "{refused:?}");
        assert!(refused.reason.contains("already served by agent instance instance-a"), "{refused:?}");
        let cancel = &entries[2];
        assert_eq!(cancel.actor, "ops");
        assert!(cancel.reason.contains("maintenance window") && cancel.reason.contains("alice"), "{cancel:?}");
        assert!(entries.iter().all(|a| a.time.as_ref().is_some_and(|t| t.seconds >= before && t.seconds <= now())));
    };
    check(&audit(ch.clone(), "eve-secret", "").await.unwrap());
    // By subject; and a plain user may not read it.
    assert_eq!(audit(ch.clone(), "ops-secret", "n1").await.unwrap().len(), 2);
    let e = audit(ch.clone(), "alice-secret", "").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("user alice is neither"), "{}", e.message());
    // The viewer sees no one's jobs.
    let got = jobs.get_job(authed("eve-secret", pb::GetJobRequest { id: job.id.clone() })).await.unwrap_err();
    assert_eq!(got.code(), Code::NotFound);
    srv.stop().await.unwrap();
    drop((jobs, ch));

    let srv = service::start(cfg()).await.unwrap();
    let ch = channel(srv.addr).await;
    check(&audit(ch, "ops-secret", "").await.unwrap());
    srv.stop().await.unwrap();
}

/// Register reconciles: an attempt the agent runs that the scheduler does not
/// run there is stopped; an attempt the scheduler runs there that an agent
/// (restarted with a wiped state dir) does not report is requeued as lost after
/// `reconcile_grace`, and runs again.
#[tokio::test]
async fn register_stops_strays_and_requeues_what_the_agent_no_longer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.planning.reconcile_grace = Duration::from_secs(1);
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let id = submit_web(&mut jobs, "rec", |_| {}).await;
    let stray = pb::RunningJob { job_id: "no-such-job".into(), attempt_id: "no-such-job-1".into(), pid: 4242 };
    let mut a = connect_agent(&ch, register("n1", "instance-a", vec![stray], 0)).await.unwrap();
    let stop = |b| match b {
        pb::scheduler_message::Body::Stop(s) => Some(s),
        _ => None,
    };
    let run = |b| match b {
        pb::scheduler_message::Body::Run(r) => Some(r),
        _ => None,
    };
    let (_, s) = a.next(Duration::from_secs(5), stop).await.expect("a StopJob for the stray attempt");
    assert_eq!(s.attempt_id, "no-such-job-1");
    assert!(s.reason.contains("the scheduler has no such job"), "{}", s.reason);
    let (seq, r) = a.next(Duration::from_secs(10), run).await.expect("the job is dispatched");
    let started = pb::JobStatus {
        job_id: id.clone(),
        attempt_id: r.attempt_id.clone(),
        phase: pb::JobPhase::Started as i32,
        ..Default::default()
    };
    a.tx.send(pb::AgentMessage { seq: 1, ack: seq, body: Some(pb::agent_message::Body::JobStatus(started)) })
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner().state
        != pb::JobState::Running as i32
    {
        assert!(std::time::Instant::now() < until, "the job never showed running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The agent dies and comes back with a wiped state dir: a new instance that
    // runs nothing. It is admitted once the old session is gone.
    drop(a);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut b = loop {
        match connect_agent(&ch, register("n1", "instance-c", vec![], 0)).await {
            Ok(b) => break b,
            Err(e) if e.code() == Code::AlreadyExists && std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let (_, again) = b.next(Duration::from_secs(10), run).await.expect("the lost job runs again");
    assert_ne!(again.attempt_id, r.attempt_id);
    let j = jobs.get_job(authed(USER, pb::GetJobRequest { id })).await.unwrap().into_inner();
    assert_eq!(j.attempts, 2, "{j:?}");
}

/// Issue 19's cancel that did not reach the process: a cancel is `cancelling`
/// until the agent reports the process gone. One sent to a node that is away is
/// resent when it registers again (reporting the attempt still running), and
/// only then does the job become `cancelled`.
#[tokio::test]
async fn a_cancel_is_cancelling_until_the_agent_confirms_even_across_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let id = submit_web(&mut jobs, "can", |_| {}).await;
    let run = |b| match b {
        pb::scheduler_message::Body::Run(r) => Some(r),
        _ => None,
    };
    let stop = |b| match b {
        pb::scheduler_message::Body::Stop(s) => Some(s),
        _ => None,
    };
    let mut a = connect_agent(&ch, register("n1", "instance-a", vec![], 0)).await.unwrap();
    let (run_seq, r) = a.next(Duration::from_secs(10), run).await.expect("the job is dispatched");
    let status = |phase: pb::JobPhase, signal: Option<i32>| pb::JobStatus {
        job_id: id.clone(),
        attempt_id: r.attempt_id.clone(),
        phase: phase as i32,
        signal,
        ..Default::default()
    };
    let body = Some(pb::agent_message::Body::JobStatus(status(pb::JobPhase::Started, None)));
    a.tx.send(pb::AgentMessage { seq: 1, ack: run_seq, body }).await.unwrap();
    // The node goes away, then the user cancels.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel = || authed(USER, pb::CancelJobRequest { id: id.clone(), reason: "not needed".into() });
    let j = jobs.cancel_job(cancel()).await.unwrap().into_inner();
    assert_eq!(j.state, pb::JobState::Cancelling as i32, "{j:?}");
    assert_eq!(j.state_reason, "not needed; stopping on n1");
    // Asked again: the same answer, not an error.
    assert_eq!(jobs.cancel_job(cancel()).await.unwrap().into_inner().state, pb::JobState::Cancelling as i32);
    // Back, with the process still running: the stop arrives.
    let running = pb::RunningJob { job_id: id.clone(), attempt_id: r.attempt_id.clone(), pid: 99 };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut b = loop {
        match connect_agent(&ch, register("n1", "instance-a", vec![running.clone()], run_seq)).await {
            Ok(b) => break b,
            Err(e) if std::time::Instant::now() < until => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let (stop_seq, s) = b.next(Duration::from_secs(5), stop).await.expect("the stop is resent");
    assert_eq!(s.attempt_id, r.attempt_id);
    let still = jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner();
    assert_eq!(still.state, pb::JobState::Cancelling as i32, "not cancelled before the agent says so: {still:?}");
    let body = Some(pb::agent_message::Body::JobStatus(status(pb::JobPhase::Exited, Some(15))));
    b.tx.send(pb::AgentMessage { seq: 2, ack: stop_seq, body }).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let done = loop {
        let j = jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner();
        if j.state != pb::JobState::Cancelling as i32 || std::time::Instant::now() > until {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, pb::JobState::Cancelled as i32, "{done:?}");
    assert_eq!(done.state_reason, "not needed; stopped on n1 (killed by signal 15)");
}

/// A node-bound agent token registers only as the nodes it names (exact or a
/// `prefix*`): another name is refused PERMISSION_DENIED naming both, so a node
/// holding it cannot take another node's jobs. A fleet-wide token still may.
#[tokio::test]
async fn a_node_token_registers_only_as_its_own_nodes() {
    use greenfill_scheduler::service::config::NodeToken;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.node_tokens = vec![
        NodeToken { token: "n1-secret".into(), nodes: vec!["n1".into()] },
        NodeToken { token: "rack7-secret".into(), nodes: vec!["rack7-*".into()] },
    ];
    c.validate("test").unwrap();
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let e = connect_agent_as(&ch, "n1-secret", register("n2", "i-1", vec![], 0)).await.err().expect("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node n2") && e.message().contains("\"n1\""), "{}", e.message());
    let e = connect_agent_as(&ch, "rack7-secret", register("rack8-1", "i-2", vec![], 0)).await.err().expect("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = connect_agent_as(&ch, "n9-secret", register("n9", "i-3", vec![], 0)).await.err().expect("refused");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let _n1 = connect_agent_as(&ch, "n1-secret", register("n1", "i-1", vec![], 0)).await.unwrap();
    let _r = connect_agent_as(&ch, "rack7-secret", register("rack7-12", "i-2", vec![], 0)).await.unwrap();
    let _any = connect_agent(&ch, register("n2", "i-4", vec![], 0)).await.unwrap();
    // A credential for every node is a fleet token, not a node token.
    let mut bad = config(dir.path());
    bad.node_tokens = vec![
        NodeToken { token: "t".into(), nodes: vec!["*".into()] },
        NodeToken { token: "t".into(), nodes: vec!["x".into()] },
    ];
    let e = bad.validate("test").unwrap_err().to_string();
    assert!(e.contains("node_tokens[0].nodes") && e.contains("node_tokens[1].token"), "{e}");
}

/// Users own their jobs: another user neither sees nor touches them (NOT_FOUND,
/// as a job that does not exist); an admin does; a job may run only as the
/// submitter's uids and gids; a shared `user_tokens` token is an admin, as
/// before users existed.
#[tokio::test]
async fn users_see_and_touch_only_their_own_jobs_and_run_only_as_their_uids() {
    use greenfill_scheduler::service::config::UserDecl;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let user = |name: &str, uids: Vec<u32>, admin: bool| UserDecl {
        name: name.into(),
        token: format!("{name}-secret"),
        gids: uids.clone(),
        uids,
        admin,
        viewer: false,
    };
    c.users = vec![user("alice", vec![1000], false), user("bob", vec![2000], false), user("ops", vec![], true)];
    c.validate("test").unwrap();
    let srv = service::start(c).await.unwrap();
    let mut jobs = JobServiceClient::new(channel(srv.addr).await);
    let submit = |token: &'static str, rid: &str, uid: Option<u32>| {
        let mut s = spec();
        s.run_as_uid = uid;
        authed(token, pb::SubmitJobRequest { request_id: rid.into(), spec: Some(s) })
    };
    let a = jobs.submit_job(submit("alice-secret", "a1", Some(1000))).await.unwrap().into_inner().job.unwrap();
    assert_eq!(a.owner, "alice");
    let e = jobs.submit_job(submit("alice-secret", "a2", Some(2000))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("spec.run_as_uid = 2000") && e.message().contains("alice"), "{}", e.message());
    // bob: nothing of alice's is there for him.
    let get = |token: &'static str| authed(token, pb::GetJobRequest { id: a.id.clone() });
    assert_eq!(jobs.get_job(get("bob-secret")).await.unwrap_err().code(), Code::NotFound);
    let explain = authed("bob-secret", pb::ExplainJobRequest { id: a.id.clone() });
    assert_eq!(jobs.explain_job(explain).await.unwrap_err().code(), Code::NotFound);
    let cancel = authed("bob-secret", pb::CancelJobRequest { id: a.id.clone(), reason: String::new() });
    assert_eq!(jobs.cancel_job(cancel).await.unwrap_err().code(), Code::NotFound);
    let list = |token: &'static str| authed(token, pb::ListJobsRequest { page_size: 100, ..Default::default() });
    assert!(jobs.list_jobs(list("bob-secret")).await.unwrap().into_inner().jobs.is_empty());
    let e = jobs.submit_job(submit("bob-secret", "a1", None)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "another user's request id: {e:?}");
    // alice, an admin and the shared token (an admin) see it.
    for token in ["alice-secret", "ops-secret", USER] {
        assert_eq!(jobs.get_job(get(token)).await.unwrap().into_inner().id, a.id, "{token}");
        assert_eq!(jobs.list_jobs(list(token)).await.unwrap().into_inner().jobs.len(), 1, "{token}");
    }
    // bob's watch does not carry alice's change; alice's does.
    let watch = |token: &'static str| authed(token, pb::WatchJobsRequest { since_revision: 1, ..Default::default() });
    let mut bobs = jobs.watch_jobs(watch("bob-secret")).await.unwrap().into_inner();
    let mut alices = jobs.watch_jobs(watch("alice-secret")).await.unwrap().into_inner();
    let cancel = authed("ops-secret", pb::CancelJobRequest { id: a.id.clone(), reason: "by ops".into() });
    let cancelled = jobs.cancel_job(cancel).await.unwrap().into_inner();
    assert_eq!((cancelled.state, cancelled.cancelled_by.as_str()), (pb::JobState::Cancelled as i32, "ops"));
    let seen = tokio::time::timeout(Duration::from_secs(5), alices.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(seen.job.unwrap().id, a.id);
    assert!(tokio::time::timeout(Duration::from_millis(500), bobs.message()).await.is_err(), "bob saw alice's job");
}

fn base64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
        }
    }
    out
}

/// An RSA key made by openssl: (private PEM, the public JWK's `n`).
fn rsa_key(dir: &std::path::Path, name: &str) -> (Vec<u8>, String) {
    let path = dir.join(format!("{name}.pem"));
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(ok.success());
    let out =
        std::process::Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&path).output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap().trim().trim_start_matches("Modulus=").to_owned();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    (std::fs::read(&path).unwrap(), base64url(&bytes))
}

/// Serve `body` as JSON to every request on a loopback port (the cluster's
/// `/openid/v1/jwks`).
async fn serve_json(body: String) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        }
    });
    port
}

/// Agents on Kubernetes: a projected service-account token, checked against
/// the cluster's JWKS, lets its pod register as the node it names and no
/// other; a token with the wrong audience, issuer, subject, key or signature,
/// an expired one, or one naming no node, is refused with the reason.
#[tokio::test]
async fn a_kubernetes_service_account_token_registers_only_as_its_pods_node() {
    use greenfill_scheduler::service::config::KubernetesAuth;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let dir = tempfile::tempdir().unwrap();
    let (key, n) = rsa_key(dir.path(), "cluster");
    let (other_key, _) = rsa_key(dir.path(), "other");
    let jwks = format!(r#"{{"keys":[{{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":"{n}","e":"AQAB"}}]}}"#);
    let port = serve_json(jwks).await;
    let mut c = config(dir.path());
    let kube = KubernetesAuth {
        jwks_url: format!("http://127.0.0.1:{port}/openid/v1/jwks"),
        ca_cert: None,
        token_file: None,
        ..KubernetesAuth::default()
    };
    let (issuer, sa) = (kube.issuer.clone(), kube.service_account.clone());
    c.kubernetes = Some(kube);
    c.validate("test").unwrap();
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mint = |edit: &dyn Fn(&mut serde_json::Value), kid: &str, pem: &[u8]| {
        let mut claims = serde_json::json!({
            "iss": issuer, "aud": ["greenfill"], "sub": sa, "iat": now(), "exp": now() + 600,
            "kubernetes.io": {"namespace": "greenfill", "node": {"name": "n1", "uid": "u1"},
                              "pod": {"name": "greenfill-agent-x", "uid": "u2"},
                              "serviceaccount": {"name": "greenfill-agent", "uid": "u3"}},
        });
        edit(&mut claims);
        let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::RS256) };
        encode(&header, &claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
    };
    let good = mint(&|_| {}, "k1", &key);
    let _n1 = connect_agent_as(&ch, &good, register("n1", "i-1", vec![], 0)).await.unwrap();
    let e = connect_agent_as(&ch, &good, register("n2", "i-2", vec![], 0)).await.err().expect("another node");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("node n2") && e.message().contains("\"n1\""), "{}", e.message());
    let refused: Vec<(&str, String)> = vec![
        ("InvalidAudience", mint(&|c| c["aud"] = serde_json::json!(["other"]), "k1", &key)),
        ("InvalidIssuer", mint(&|c| c["iss"] = "https://elsewhere".into(), "k1", &key)),
        ("ExpiredSignature", mint(&|c| c["exp"] = (now() - 3600).into(), "k1", &key)),
        ("is not system:serviceaccount", mint(&|c| c["sub"] = "system:serviceaccount:default:x".into(), "k1", &key)),
        ("names no pod and node", mint(&|c| c["kubernetes.io"]["node"] = serde_json::Value::Null, "k1", &key)),
        ("not in the cluster's JWKS", mint(&|_| {}, "k2", &key)),
        ("InvalidSignature", mint(&|_| {}, "k1", &other_key)),
    ];
    for (why, token) in refused {
        let e = connect_agent_as(&ch, &token, register("n1", "i-3", vec![], 0)).await.err().expect(why);
        assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
    }
}

/// Every RPC × {owner, another user, admin, agent, no token}: what each may do.
/// The job is alice's; CancelJob gets one of alice's jobs per role.
#[tokio::test]
async fn every_rpc_by_every_kind_of_caller() {
    use greenfill_scheduler::service::config::UserDecl;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    let user = |name: &str, uids: Vec<u32>, admin: bool| UserDecl {
        name: name.into(),
        token: format!("{name}-secret"),
        gids: vec![],
        uids,
        admin,
        viewer: false,
    };
    c.users = vec![user("alice", vec![1000], false), user("bob", vec![2000], false), user("ops", vec![], true)];
    c.validate("test").unwrap();
    let srv = service::start(c).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut plans = pb::plan_service_client::PlanServiceClient::new(ch.clone());
    let roles: [(&str, Option<&str>); 5] = [
        ("owner", Some("alice-secret")),
        ("other", Some("bob-secret")),
        ("admin", Some("ops-secret")),
        ("agent", Some(AGENT)),
        ("none", None),
    ];
    fn req<T>(token: Option<&str>, msg: T) -> tonic::Request<T> {
        match token {
            Some(t) => authed(t, msg),
            None => tonic::Request::new(msg),
        }
    }
    let submit_as_alice = |rid: String| {
        let mut s = spec();
        s.run_as_uid = Some(1000);
        authed("alice-secret", pb::SubmitJobRequest { request_id: rid, spec: Some(s) })
    };
    let job = jobs.submit_job(submit_as_alice("the-job".into())).await.unwrap().into_inner().job.unwrap().id;
    let mut to_cancel = Vec::new();
    for (role, _) in &roles {
        let j = jobs.submit_job(submit_as_alice(format!("cancel-{role}"))).await.unwrap().into_inner().job.unwrap();
        to_cancel.push(j.id);
    }
    let code = |r: Result<(), tonic::Status>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("{:?}", e.code()),
    };
    let mut got: Vec<(String, Vec<String>)> = Vec::new();
    for rpc in [
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "ExplainJob",
        "WatchJobs",
        "CancelJob",
        "GetPlan",
        "ListNodes",
        "ListAudit",
        "GetLedger",
        "Session",
    ] {
        let mut row = Vec::new();
        for (k, (role, token)) in roles.iter().enumerate() {
            let t = *token;
            let r = match rpc {
                "SubmitJob" => {
                    let mut s = spec();
                    s.run_as_uid = Some(1000);
                    let m = pb::SubmitJobRequest { request_id: format!("submit-{role}"), spec: Some(s) };
                    jobs.submit_job(req(t, m)).await.map(|_| ())
                }
                "GetJob" => jobs.get_job(req(t, pb::GetJobRequest { id: job.clone() })).await.map(|_| ()),
                "ListJobs" => jobs
                    .list_jobs(req(t, pb::ListJobsRequest { page_size: 1000, ..Default::default() }))
                    .await
                    .map(|r| r.into_inner().jobs.iter().any(|j| j.id == job))
                    .map(|sees| row.push(format!("ok, sees it: {sees}"))),
                "ExplainJob" => jobs.explain_job(req(t, pb::ExplainJobRequest { id: job.clone() })).await.map(|_| ()),
                "WatchJobs" => jobs.watch_jobs(req(t, pb::WatchJobsRequest::default())).await.map(|_| ()),
                "CancelJob" => {
                    let m = pb::CancelJobRequest { id: to_cancel[k].clone(), reason: String::new() };
                    jobs.cancel_job(req(t, m)).await.map(|_| ())
                }
                "GetPlan" => plans.get_plan(req(t, pb::GetPlanRequest::default())).await.map(|_| ()),
                "ListNodes" => plans.list_nodes(req(t, pb::ListNodesRequest::default())).await.map(|_| ()),
                "ListAudit" => plans.list_audit(req(t, pb::ListAuditRequest::default())).await.map(|_| ()),
                "GetLedger" => plans.get_ledger(req(t, pb::GetLedgerRequest::default())).await.map(|_| ()),
                _ => {
                    let first = register(&format!("node-{role}"), role, vec![], 0);
                    match t {
                        Some(t) => connect_agent_as(&ch, t, first).await.map(|_| ()),
                        None => {
                            let (tx, rx) = tokio::sync::mpsc::channel(4);
                            tx.send(first).await.unwrap();
                            let mut agents = AgentServiceClient::new(ch.clone());
                            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                            agents.session(tonic::Request::new(stream)).await.map(|_| ())
                        }
                    }
                }
            };
            if !(rpc == "ListJobs" && r.is_ok()) {
                row.push(code(r));
            }
        }
        got.push((rpc.to_owned(), row));
    }
    let u = "Unauthenticated";
    let expected: Vec<(&str, [&str; 5])> = vec![
        //             owner                 other                  admin                 agent  none
        ("SubmitJob", ["ok", "PermissionDenied", "ok", u, u]),
        ("GetJob", ["ok", "NotFound", "ok", u, u]),
        ("ListJobs", ["ok, sees it: true", "ok, sees it: false", "ok, sees it: true", u, u]),
        ("ExplainJob", ["ok", "NotFound", "ok", u, u]),
        ("WatchJobs", ["ok", "ok", "ok", u, u]),
        ("CancelJob", ["ok", "NotFound", "ok", u, u]),
        // PlanService answers admins (and viewers); there is no plan yet (no node).
        ("GetPlan", ["PermissionDenied", "PermissionDenied", "NotFound", u, u]),
        ("ListNodes", ["PermissionDenied", "PermissionDenied", "ok", u, u]),
        ("ListAudit", ["PermissionDenied", "PermissionDenied", "ok", u, u]),
        ("GetLedger", ["PermissionDenied", "PermissionDenied", "ok", u, u]),
        ("Session", [u, u, u, "ok", u]),
    ];
    assert_eq!(got.len(), expected.len(), "an RPC without its expected row");
    for ((rpc, row), (want_rpc, want)) in got.iter().zip(&expected) {
        assert_eq!(rpc, want_rpc);
        assert_eq!(row, &want.to_vec(), "{rpc} by (owner, other, admin, agent, none)");
    }
}

/// Issue 31, the plan: a node with 2 GPUs is sent two 1-GPU jobs at once and
/// not a third, though its CPU and memory have room for it; when one ends, the
/// third is sent.
#[tokio::test]
async fn a_node_is_sent_no_more_gpu_jobs_than_it_has_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut first = register("g1", "g1", vec![], 0);
    if let Some(pb::agent_message::Body::Register(r)) = &mut first.body {
        r.gpus = 2;
    }
    let mut agent = connect_agent(&ch, first).await.unwrap();
    let mut ids = Vec::new();
    for k in 0..3 {
        ids.push(submit_web(&mut jobs, &format!("gpu-{k}"), |s| s.gpus = 1).await);
    }
    let run = |b: pb::scheduler_message::Body| match b {
        pb::scheduler_message::Body::Run(r) => Some(r),
        _ => None,
    };
    let mut sent = Vec::new();
    let mut seq = 0;
    while let Some((ack, r)) = agent.next(Duration::from_secs(3), run).await {
        seq += 1;
        let status = pb::JobStatus {
            job_id: r.job_id.clone(),
            attempt_id: r.attempt_id.clone(),
            phase: pb::JobPhase::Started as i32,
            ..Default::default()
        };
        agent
            .tx
            .send(pb::AgentMessage { seq, ack, body: Some(pb::agent_message::Body::JobStatus(status)) })
            .await
            .unwrap();
        sent.push(r);
    }
    assert_eq!(
        sent.len(),
        2,
        "two GPUs, two GPU jobs at once: {:?}",
        sent.iter().map(|r| &r.job_id).collect::<Vec<_>>()
    );
    // One ends: the third is sent.
    seq += 1;
    let done = pb::JobStatus {
        job_id: sent[0].job_id.clone(),
        attempt_id: sent[0].attempt_id.clone(),
        phase: pb::JobPhase::Exited as i32,
        exit_code: Some(0),
        ..Default::default()
    };
    agent
        .tx
        .send(pb::AgentMessage { seq, ack: 0, body: Some(pb::agent_message::Body::JobStatus(done)) })
        .await
        .unwrap();
    let (_, third) = agent.next(Duration::from_secs(10), run).await.expect("the third GPU job once a GPU is free");
    assert!(ids.contains(&third.job_id) && sent.iter().all(|r| r.job_id != third.job_id), "{third:?}");
}

/// A node's registered GPUs (`n` of `model`, 40 GiB, a `min`–`max` W limit range).
fn gpu_node(node: &str, pool: &str, n: u32, model: &str, min: f64, max: f64) -> pb::AgentMessage {
    let mut m = register(node, node, vec![], 0);
    if let Some(pb::agent_message::Body::Register(r)) = &mut m.body {
        r.pool = pool.into();
        r.gpus = n;
        r.gpu_devices = (0..n)
            .map(|i| pb::GpuInfo {
                index: i,
                uuid: format!("GPU-{node}-{i}"),
                model: model.into(),
                memory_bytes: 40 << 30,
                power_limit_min_w: min,
                power_limit_max_w: max,
                power_limit_w: max,
            })
            .collect();
    }
    m
}

/// Submit refuses GPU asks no registered node can meet, naming the field, the
/// value and what the nodes have; a model-bound job goes to its model's node.
#[tokio::test]
async fn gpu_asks_are_checked_against_the_nodes_gpus_and_a_model_picks_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut a100 = connect_agent(&ch, gpu_node("g1", "web", 2, "NVIDIA A100-SXM4-40GB", 100.0, 400.0)).await.unwrap();
    let mut l4 = connect_agent(&ch, gpu_node("g2", "inference", 1, "NVIDIA L4", 40.0, 72.0)).await.unwrap();
    let refused = |edit: fn(&mut pb::JobSpec)| {
        let mut s = spec();
        edit(&mut s);
        let mut jobs = jobs.clone();
        async move {
            let r = jobs.submit_job(authed(USER, pb::SubmitJobRequest { request_id: "r".into(), spec: Some(s) })).await;
            let e = r.expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            e.message().to_owned()
        }
    };
    let m = refused(|s| s.gpus = 3).await;
    assert!(m.contains("spec.gpus = 3: more than any node has (2: the largest is node g1 with 2)"), "{m}");
    let m = refused(|s| (s.gpus, s.gpu_model) = (1, "H100".into())).await;
    assert!(m.contains("spec.gpu_model = \"H100\": no node has a GPU of this model"), "{m}");
    assert!(m.contains("NVIDIA A100-SXM4-40GB") && m.contains("NVIDIA L4"), "{m}");
    let m = refused(|s| (s.gpus, s.gpu_model, s.gpu_power_limit_w) = (1, "L4".into(), Some(100.0))).await;
    assert!(m.contains("spec.gpu_power_limit_w = 100: outside every matching GPU's range (NVIDIA L4: 40–72 W)"), "{m}");
    let m = refused(|s| (s.gpus, s.gpu_memory_bytes) = (1, 80 << 30)).await;
    assert!(m.contains("spec.gpu_memory_bytes = 85899345920: more than any matching GPU has"), "{m}");
    let m = refused(|s| s.gpu_model = "A100".into()).await;
    assert!(m.contains("spec.gpu_model = \"A100\": needs spec.gpus > 0"), "{m}");
    let m = refused(|s| (s.gpus, s.gpu_power_limit_w, s.gpu_power_auto) = (1, Some(200.0), true)).await;
    assert!(m.contains("spec.gpu_power_auto = true: not with spec.gpu_power_limit_w"), "{m}");

    // Within the A100's range: accepted, and sent to the A100 node only.
    let mut s = spec();
    (s.gpus, s.gpu_model, s.gpu_power_limit_w) = (1, "A100".into(), Some(250.0));
    let id = jobs
        .submit_job(authed(USER, pb::SubmitJobRequest { request_id: "ok".into(), spec: Some(s) }))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let run = |b: pb::scheduler_message::Body| match b {
        pb::scheduler_message::Body::Run(r) => Some(r),
        _ => None,
    };
    let (_, r) = a100.next(Duration::from_secs(10), run).await.expect("the A100 job on g1");
    assert_eq!(r.job_id, id);
    assert_eq!(r.spec.unwrap().gpu_power_limit_w, Some(250.0));
    assert!(l4.next(Duration::from_secs(2), run).await.is_none(), "the L4 node gets nothing");
}

/// A GPU job's ledger counts its GPUs' energy: NVML's counter delta when the
/// agent reports one, else GPUs × `power.gpu_busy_w` × run time; × PUE.
#[tokio::test]
async fn a_gpu_jobs_ledger_counts_its_gpus_energy_from_nvml_or_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let srv = service::start(config(dir.path())).await.unwrap();
    let ch = channel(srv.addr).await;
    let mut jobs = JobServiceClient::new(ch.clone());
    let mut agent = connect_agent(&ch, gpu_node("g1", "web", 2, "NVIDIA A100-SXM4-40GB", 100.0, 400.0)).await.unwrap();
    let a = submit_web(&mut jobs, "nvml", |s| s.gpus = 1).await;
    let b = submit_web(&mut jobs, "model", |s| s.gpus = 1).await;
    let run = |b: pb::scheduler_message::Body| match b {
        pb::scheduler_message::Body::Run(r) => Some(r),
        _ => None,
    };
    let mut seq = 0;
    let mut send = |status: pb::JobStatus| {
        seq += 1;
        pb::AgentMessage { seq, ack: 0, body: Some(pb::agent_message::Body::JobStatus(status)) }
    };
    let mut started = Vec::new();
    while started.len() < 2 {
        let (_, r) = agent.next(Duration::from_secs(10), run).await.expect("both GPU jobs sent");
        let s = pb::JobStatus {
            job_id: r.job_id.clone(),
            attempt_id: r.attempt_id.clone(),
            phase: pb::JobPhase::Started as i32,
            time: ts(now() - 100),
            ..Default::default()
        };
        agent.tx.send(send(s)).await.unwrap();
        started.push(r);
    }
    for r in &started {
        let s = pb::JobStatus {
            job_id: r.job_id.clone(),
            attempt_id: r.attempt_id.clone(),
            phase: pb::JobPhase::Exited as i32,
            exit_code: Some(0),
            time: ts(now()),
            // 1 kWh on the counter for `a`; none for `b`.
            gpu_energy_j: (r.job_id == a).then_some(3.6e6),
            ..Default::default()
        };
        agent.tx.send(send(s)).await.unwrap();
    }
    let ledger = |id: String| {
        let mut jobs = jobs.clone();
        async move {
            for _ in 0..100 {
                let j = jobs.get_job(authed(USER, pb::GetJobRequest { id: id.clone() })).await.unwrap().into_inner();
                if let Some(l) = j.ledger {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no ledger for {id}");
        }
    };
    let la = ledger(a).await;
    assert_eq!(la.gpu_energy_source, "nvml");
    assert!((la.gpu_energy_kwh - 1.2).abs() < 1e-9, "1 kWh × PUE 1.2: {la:?}");
    assert!(la.energy_kwh >= la.gpu_energy_kwh);
    let lb = ledger(b).await;
    assert_eq!(lb.gpu_energy_source, "power-model");
    // 1 GPU × 300 W × the run time × 1.2.
    let want = 300.0 * lb.run_seconds * 1.2 / 3.6e6;
    assert!(lb.run_seconds >= 99.0 && (lb.gpu_energy_kwh - want).abs() < 1e-9, "{lb:?}");
}
