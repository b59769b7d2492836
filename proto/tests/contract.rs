//! The API contract: a snapshot of every message, field number, enum value and RPC
//! (`api.lock`), so that a change to the wire format is a visible, reviewed diff,
//! and round trips of the messages through their encoding.
//!
//! After an intended API change: `GREENFILL_BLESS=1 cargo test -p greenfill-proto`.

use greenfill_proto::FILE_DESCRIPTOR_SET;
use greenfill_proto::v1::{
    AgentMessage, Job, JobSpec, JobState, Plan, PoolPlan, Register, SchedulerMessage, SubmitJobRequest,
    TelemetrySample, agent_message, scheduler_message,
};
use prost::Message;
use prost_reflect::{DescriptorPool, Kind};
use std::collections::HashMap;
use std::fmt::Write;

fn describe() -> String {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut out = String::new();
    for file in pool.files().filter(|f| f.package_name() == "greenfill.v1") {
        writeln!(out, "file {}", file.name()).unwrap();
        for svc in file.services() {
            writeln!(out, "  service {}", svc.name()).unwrap();
            for m in svc.methods() {
                let s = |b: bool| if b { "stream " } else { "" };
                writeln!(
                    out,
                    "    rpc {}({}{}) -> {}{}",
                    m.name(),
                    s(m.is_client_streaming()),
                    m.input().full_name(),
                    s(m.is_server_streaming()),
                    m.output().full_name()
                )
                .unwrap();
            }
        }
        for msg in file.messages() {
            describe_message(&mut out, &msg, 1);
        }
        for e in file.enums() {
            writeln!(out, "  enum {}", e.name()).unwrap();
            for v in e.values() {
                writeln!(out, "    {} = {}", v.name(), v.number()).unwrap();
            }
        }
    }
    out
}

fn describe_message(out: &mut String, msg: &prost_reflect::MessageDescriptor, depth: usize) {
    if msg.is_map_entry() {
        return;
    }
    let pad = "  ".repeat(depth);
    writeln!(out, "{pad}message {}", msg.name()).unwrap();
    for f in msg.fields() {
        let kind = match f.kind() {
            Kind::Message(m) => m.full_name().to_owned(),
            Kind::Enum(e) => e.full_name().to_owned(),
            k => format!("{k:?}").to_lowercase(),
        };
        let label = if f.is_map() {
            "map "
        } else if f.is_list() {
            "repeated "
        } else {
            ""
        };
        let oneof = f.containing_oneof().map(|o| format!(" (oneof {})", o.name())).unwrap_or_default();
        writeln!(out, "{pad}  {} = {}: {label}{kind}{oneof}", f.name(), f.number()).unwrap();
    }
    for nested in msg.child_messages() {
        describe_message(out, &nested, depth + 1);
    }
}

#[test]
fn api_matches_the_lock_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/api.lock");
    let now = describe();
    if std::env::var_os("GREENFILL_BLESS").is_some() {
        std::fs::write(path, &now).unwrap();
        return;
    }
    let locked = std::fs::read_to_string(path).unwrap_or_default();
    if locked != now {
        let diff: Vec<String> = diff_lines(&locked, &now);
        panic!(
            "the greenfill.v1 API differs from proto/api.lock:\n{}\n\
             If this change is intended (added fields only; never renumber), run \
             `GREENFILL_BLESS=1 cargo test -p greenfill-proto` and commit api.lock.",
            diff.join("\n")
        );
    }
}

fn diff_lines(old: &str, new: &str) -> Vec<String> {
    let o: Vec<&str> = old.lines().collect();
    let n: Vec<&str> = new.lines().collect();
    let mut d: Vec<String> = o.iter().filter(|l| !n.contains(l)).map(|l| format!("- {l}")).collect();
    d.extend(n.iter().filter(|l| !o.contains(l)).map(|l| format!("+ {l}")));
    d
}

#[test]
fn no_field_number_is_reused_within_a_message() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    for msg in pool.all_messages().filter(|m| m.package_name() == "greenfill.v1") {
        let mut seen = HashMap::new();
        for f in msg.fields() {
            assert!(seen.insert(f.number(), f.name().to_owned()).is_none(), "{}: {}", msg.full_name(), f.number());
        }
    }
}

#[test]
fn descriptor_set_has_every_service_for_reflection() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    for s in ["greenfill.v1.JobService", "greenfill.v1.AgentService", "greenfill.v1.PlanService"] {
        assert!(pool.get_service_by_name(s).is_some(), "{s}");
    }
}

fn spec() -> JobSpec {
    JobSpec {
        name: "nightly-etl".into(),
        command: vec!["python3".into(), "etl.py".into(), "--day=2022-01-01".into()],
        env: HashMap::from([("TZ".into(), "UTC".into())]),
        working_dir: "/srv/etl".into(),
        cpu_cores: 1.5,
        memory_bytes: 4 << 30,
        gpus: 0,
        expected_duration: Some(prost_types::Duration { seconds: 7200, nanos: 0 }),
        deadline: Some(prost_types::Timestamp { seconds: 1_641_000_000, nanos: 0 }),
        priority: -3,
        pausable: true,
        labels: HashMap::from([("team".into(), "data".into())]),
        pool: "batch-a".into(),
        run_as_uid: Some(1000),
        ..Default::default()
    }
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(&M::decode(bytes.as_slice()).unwrap(), m);
}

#[test]
fn messages_round_trip() {
    round_trip(&SubmitJobRequest { request_id: "6f1c".into(), spec: Some(spec()) });
    round_trip(&Job {
        id: "j-1".into(),
        spec: Some(spec()),
        state: JobState::Running.into(),
        exit_code: Some(0),
        revision: 7,
        ..Default::default()
    });
    round_trip(&AgentMessage {
        seq: 12,
        ack: 40,
        body: Some(agent_message::Body::Register(Register {
            node_name: "n1".into(),
            cpu_cores: 64.0,
            memory_bytes: 256 << 30,
            last_command_seq: 40,
            ..Default::default()
        })),
    });
    round_trip(&AgentMessage {
        seq: 0,
        ack: 41,
        body: Some(agent_message::Body::Telemetry(TelemetrySample {
            node_cpu_cores: Some(12.5),
            online_cpu_cores: None,
            ..Default::default()
        })),
    });
    round_trip(&SchedulerMessage {
        seq: 41,
        ack: 12,
        epoch: 3,
        body: Some(scheduler_message::Body::Run(greenfill_proto::v1::RunJob {
            job_id: "j-1".into(),
            attempt_id: "j-1.1".into(),
            spec: Some(spec()),
        })),
    });
    round_trip(&Plan {
        slots: 96,
        pools: vec![PoolPlan { pool: "a".into(), nodes: 10, powered_nodes: vec![10, 9, 4], ..Default::default() }],
        carbon_intensity: vec![256.2, 190.0],
        ..Default::default()
    });
}

#[test]
fn an_unset_optional_differs_from_zero() {
    // The agent leaves a field it could not read unset; zero would be a lie.
    let unset = TelemetrySample::default();
    let zero = TelemetrySample { online_cpu_cores: Some(0.0), ..Default::default() };
    let decoded = TelemetrySample::decode(zero.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.online_cpu_cores, Some(0.0));
    assert_ne!(decoded, unset);
}
