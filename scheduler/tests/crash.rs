//! Crash safety of the real binary: SIGKILL `greenfill-scheduler` while 8 clients
//! submit up to 1,000 jobs, restart it on the same data directory, and check that
//! every acknowledged submission is there exactly once and still queued. Ten
//! rounds on one growing database; bounded in time (each round stops by itself).

use greenfill_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_greenfill-scheduler"))
        .args(["--user-tokens", USER_TOKEN, "--agent-tokens", AGENT_TOKEN])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Server(child)
}

/// Credentials on, as in production.
const USER_TOKEN: &str = "crash-user-secret";
const AGENT_TOKEN: &str = "crash-agent-secret";

fn with_token(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert("authorization", format!("Bearer {USER_TOKEN}").parse().expect("ascii"));
    Ok(r)
}

type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type Client = JobServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>>;

async fn connect(port: u16) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            Ok(ch) => return JobServiceClient::with_interceptor(ch, with_token as Interceptor),
            Err(e) if Instant::now() > deadline => panic!("scheduler did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn spec(rid: &str) -> pb::JobSpec {
    pb::JobSpec {
        name: "crash".into(),
        command: vec!["true".into()],
        cpu_cores: 0.1,
        memory_bytes: 1 << 20,
        expected_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        labels: [("rid".to_owned(), rid.to_owned())].into(),
        ..Default::default()
    }
}

async fn all_jobs(c: &mut Client) -> Vec<pb::Job> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_jobs(pb::ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.jobs);
        token = r.next_page_token;
        if token.is_empty() {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_submissions_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // request id → job id, for every acknowledged submission of every round.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut killed_mid_flight = 0;
    for round in 0..10u64 {
        let port = free_port();
        let mut server = start(dir.path(), port);
        let client = connect(port).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let (mut c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..125u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let rid = format!("r{round}-w{w}-{i}");
                    match c.submit_job(pb::SubmitJobRequest { request_id: rid.clone(), spec: Some(spec(&rid)) }).await {
                        Ok(r) => {
                            acked.lock().unwrap().insert(rid, r.into_inner().job.unwrap().id);
                        }
                        Err(_) => {
                            failed += 1;
                            if failed > 3 {
                                break;
                            }
                        }
                    }
                }
                failed
            }));
        }
        // Kill at a different point of each round's 1,000 submissions (10 % to
        // 82 %), while they are in flight.
        let base = acked.lock().unwrap().len();
        let target = base + 100 + usize::try_from(round).unwrap() * 80;
        let waited = Instant::now();
        while acked.lock().unwrap().len() < target && waited.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let before = acked.lock().unwrap().len();
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failures = 0;
        for t in tasks {
            failures += t.await.unwrap();
        }
        if failures > 0 {
            killed_mid_flight += 1;
        }
        drop(server);

        // Restart: everything acknowledged is there, once, and still queued.
        let port = free_port();
        let _server = start(dir.path(), port);
        let mut c = connect(port).await;
        let jobs = all_jobs(&mut c).await;
        let mut by_rid: HashMap<String, Vec<&pb::Job>> = HashMap::new();
        for j in &jobs {
            let rid = j.spec.as_ref().unwrap().labels["rid"].clone();
            by_rid.entry(rid).or_default().push(j);
        }
        let acked_now = acked.lock().unwrap().clone();
        for (rid, id) in &acked_now {
            let found = by_rid.get(rid).unwrap_or_else(|| panic!("round {round}: acknowledged {rid} lost"));
            assert_eq!(found.len(), 1, "round {round}: {rid} stored {} times", found.len());
            assert_eq!(&found[0].id, id, "round {round}: {rid} has another id after restart");
            assert_eq!(found[0].state, pb::JobState::Queued as i32, "round {round}: {rid} not queued");
        }
        let ids: HashSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids.len(), jobs.len(), "round {round}: a job id listed twice");
        // Unacknowledged submissions may or may not have landed; a retry with the
        // same request id settles it without a duplicate.
        eprintln!(
            "round {round}: killed after {before} acked in total; {} stored, {} acked",
            jobs.len(),
            acked_now.len()
        );
    }
    assert!(acked.lock().unwrap().len() >= 1000, "too few submissions to mean anything");

    // And they proceed: after the last restart, an agent that registers is sent
    // acknowledged jobs to run.
    let port = free_port();
    let _server = start(dir.path(), port);
    let _ = connect(port).await;
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let reg = pb::Register {
        node_name: "after-crash".into(),
        cpu_cores: 64.0,
        memory_bytes: 256 << 30,
        ..Default::default()
    };
    tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Register(reg)) }).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sample = pb::TelemetrySample {
        time: Some(prost_types::Timestamp { seconds: now, nanos: 0 }),
        online_cpu_cores: Some(1.0),
        ..Default::default()
    };
    tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(sample)) }).await.unwrap();
    let mut session = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    session.metadata_mut().insert("authorization", format!("Bearer {AGENT_TOKEN}").parse().unwrap());
    let mut inbound =
        pb::agent_service_client::AgentServiceClient::new(ch).session(session).await.unwrap().into_inner();
    let acked_ids: HashSet<String> = acked.lock().unwrap().values().cloned().collect();
    let run = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(pb::scheduler_message::Body::Run(r)) = inbound.message().await.unwrap().unwrap().body {
                return r;
            }
        }
    })
    .await
    .expect("a RunJob for a job submitted before the crashes");
    assert!(acked_ids.contains(&run.job_id), "dispatched {} which was never acknowledged", run.job_id);
    assert!(killed_mid_flight >= 8, "the kill should land mid-submission in most rounds ({killed_mid_flight} of 10)");
}

/// A config the planner could not use is refused at start, every bad key named
/// with its value, exit code 1 (not a crash loop of "planning problem refused").
#[test]
fn a_bad_config_is_refused_at_start_naming_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "insecure_local = true\n[planning]\nmem_margin = 1.5\ncarbon_constant = -3\n\
         [[pools]]\nname = \"b\"\ncores = 8\nmemory_gib = 16\n[pools.power]\ndriver = \"ipmi\"\nsuspend_timeout = \"-1m\"\n\
         [[pools]]\nname = \"c\"\ncores = 8\nmemory_gib = 16\n[pools.power]\ndriver = \"redfish\"\n\
         [pools.power.redfish]\nusername = \"u\"\npassword = \"p\"\nsystems = {}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_greenfill-scheduler"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("db"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("planning.mem_margin = 1.5: must be in [0, 1)"), "{stderr}");
    assert!(stderr.contains("planning.carbon_constant = -3"), "{stderr}");
    // Power: an unknown driver, a negative timeout, a redfish pool without BMC addresses.
    assert!(stderr.contains("pools[0].power.driver = \"ipmi\": allowed values are exec, redfish, agent"), "{stderr}");
    assert!(stderr.contains("pools[0].power.suspend_timeout = \"-1m\": must not be negative"), "{stderr}");
    assert!(stderr.contains("pools[1].power.redfish.systems = {}"), "{stderr}");
    assert!(!stderr.contains("\u{1b}["), "no colour codes when stderr is not a terminal: {stderr}");
    assert!(!dir.path().join("db").exists(), "nothing was opened");
}
