//! The PostgreSQL store against a real server (Debian's postgresql, started by
//! the test as the `postgres` user): a batch round-trips, a fenced store whose
//! epoch has moved cannot commit, a newer schema and an unreachable server are
//! refused at start with a clear error and a non-zero exit.

use greenfill_benches::pg::{PgServer, installed};
use greenfill_scheduler::store::{AuditEntry, Bucket, NodeHistory, Postgres, Store, StoreError, Write};
use std::time::{Duration, Instant};

fn server(test: &str) -> Option<PgServer> {
    if installed().is_none() {
        greenfill_core::testing::cannot_run(test, "PostgreSQL is not installed (scripts/setup.sh installs it)");
        return None;
    }
    Some(PgServer::start().unwrap())
}

fn open(pg: &PgServer) -> Postgres {
    Postgres::open(&pg.url(), Duration::from_secs(5), Duration::from_secs(1)).unwrap()
}

fn job(seq: u64, state: i32) -> Write {
    Write::Job { seq, id: format!("j{seq}"), request_id: format!("r{seq}"), state, revision: seq, body: vec![1, 2, 3] }
}

fn scheduler() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    me.ancestors().skip(1).take(3).map(|d| d.join("greenfill-scheduler")).find(|p| p.exists()).unwrap()
}

#[test]
fn batches_round_trip_and_a_deposed_leader_cannot_commit() {
    let Some(pg) = server("postgres store") else { return };
    let mut db = open(&pg);
    assert_eq!(db.schema_version().unwrap(), 5);
    let audit = AuditEntry {
        time: 1_800_000_000,
        kind: "register".into(),
        subject: "n".into(),
        actor: "agent instance i".into(),
        address: "127.0.0.1:1".into(),
        accepted: false,
        reason: "a reason".into(),
    };
    db.commit(&[
        job(1, 1),
        job(1, 2), // the same job again in one batch: the later write wins
        Write::Command { node: "n".into(), seq: 1, body: vec![9] },
        Write::Command { node: "n".into(), seq: 2, body: vec![8] },
        Write::CommandsAcked { node: "n".into(), upto: 1 },
        Write::Telemetry { node: "n".into(), bucket: 600, online_cpu: 2.5, online_memory: 3.0, samples: 3 },
        Write::Telemetry { node: "n".into(), bucket: 300, online_cpu: 1.5, online_memory: 2.0, samples: 3 },
        Write::Telemetry { node: "m".into(), bucket: 300, online_cpu: 0.5, online_memory: 1.0, samples: 3 },
        Write::NodePower { name: "n".into(), body: "{}".into() },
        Write::Audit(audit.clone()),
    ])
    .unwrap();
    let snap = open(&pg).load().unwrap();
    assert_eq!(snap.jobs.len(), 1);
    assert_eq!(snap.revision, 1);
    assert_eq!(snap.commands, vec![("n".to_owned(), 2, vec![8])]);
    // Streamed back grouped by node, each in time order.
    let b = |at, online_cpu, online_memory| Bucket { at, online_cpu, online_memory };
    assert_eq!(
        snap.telemetry,
        vec![
            NodeHistory { node: "m".into(), buckets: vec![b(300, 0.5, 1.0)] },
            NodeHistory { node: "n".into(), buckets: vec![b(300, 1.5, 2.0), b(600, 2.5, 3.0)] },
        ]
    );
    assert_eq!(snap.audit, vec![audit]);
    // All or nothing: a duplicate request id fails the whole batch.
    let dup = Write::Job { seq: 3, id: "j3".into(), request_id: "r1".into(), state: 1, revision: 3, body: vec![] };
    assert!(db.commit(&[job(2, 1), dup]).is_err());
    assert_eq!(open(&pg).load().unwrap().jobs.len(), 1);
    // A commit is one pipeline (BEGIN … COMMIT): after a failed one the session
    // is out of its transaction, and the next commit on it is stored.
    db.commit(&[job(3, 1)]).unwrap();
    assert_eq!(open(&pg).load().unwrap().jobs.len(), 2);

    // Fencing: a store opened for epoch 1 commits while the lease says 1, and
    // not once another replica has taken epoch 2.
    let (c, conn) = postgres_client(&pg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(conn);
    rt.block_on(c.execute("UPDATE greenfill_lease SET epoch = 1", &[])).unwrap();
    let mut leader = open(&pg).fence(1);
    leader.commit(&[job(4, 1)]).unwrap();
    rt.block_on(c.execute("UPDATE greenfill_lease SET epoch = 2", &[])).unwrap();
    let e = leader.commit(&[job(5, 1)]).unwrap_err();
    assert!(matches!(e, StoreError::Deposed { ours: 1, now: 2 }), "{e}");
    let ids: Vec<u64> = open(&pg).load().unwrap().jobs.iter().map(|j| j.seq).collect();
    assert_eq!(ids, vec![1, 3, 4], "the deposed leader's batch is not stored");
    // Without a lease row nothing is fenced in: the commit fails.
    rt.block_on(c.execute("DELETE FROM greenfill_lease", &[])).unwrap();
    assert!(leader.commit(&[job(6, 1)]).is_err());
    let ids: Vec<u64> = open(&pg).load().unwrap().jobs.iter().map(|j| j.seq).collect();
    assert_eq!(ids, vec![1, 3, 4]);
}

fn postgres_client(
    pg: &PgServer,
) -> (tokio_postgres::Client, impl std::future::Future<Output = Result<(), tokio_postgres::Error>> + use<>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (c, conn) = rt.block_on(tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)).unwrap();
    std::mem::forget(rt);
    (c, conn)
}

#[test]
fn a_newer_schema_and_an_unreachable_server_stop_the_start() {
    let Some(pg) = server("postgres start errors") else { return };
    drop(open(&pg));
    let (c, conn) = postgres_client(&pg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(conn);
    rt.block_on(c.execute("UPDATE greenfill_schema SET version = 99", &[])).unwrap();
    let run = |url: &str| {
        let t0 = Instant::now();
        let out = std::process::Command::new(scheduler())
            .args(["--insecure-local", "--listen", "127.0.0.1:0", "--store", url])
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), t0.elapsed())
    };
    let (code, err, _) = run(&pg.url());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("schema version 99 is newer"), "{err}");

    // Refused at once: nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, err, _) =
        run(&format!("postgres://greenfill:s3cret@127.0.0.1:{closed}/postgres?sslmode=disable&connect_timeout=2"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{closed}")) && !err.contains("s3cret"), "{err}");
    // A server that accepts and never answers: the connect timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[replication]\nconnect_timeout = \"2s\"\n").unwrap();
    let t0 = Instant::now();
    let out = std::process::Command::new(scheduler())
        .args(["--insecure-local", "--listen", "127.0.0.1:0", "--config"])
        .arg(config.path())
        .args(["--store", &format!("postgres://greenfill@127.0.0.1:{port}/postgres?sslmode=disable")])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no connection within 2s") && err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(silent);
}
