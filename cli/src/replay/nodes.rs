//! The replay's agents: one per simulated node, speaking the agent protocol
//! (`agent.proto`) to the real scheduler — Register, telemetry from the trace,
//! job starts and exits, PowerDown acknowledged by going silent, Wake-on-LAN
//! answered by registering again after the wake latency.

use anyhow::{Context, Result};
use greenfill_proto::v1 as pb;
use pb::agent_message::Body as In;
use pb::scheduler_message::Body as Out;
use std::time::Duration;
use tokio::sync::mpsc;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// How long a command the scheduler says it sent may take to arrive (wall time).
const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// A machine's power as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Machine {
    On,
    /// Suspending; draws power until then.
    Suspending {
        off_at: i64,
    },
    Off,
    /// Booting after a wake; registers then.
    Waking {
        up_at: i64,
    },
}

impl Machine {
    pub(crate) fn powered(self) -> bool {
        self != Machine::Off
    }
}

/// An open agent session.
struct Session {
    tx: mpsc::Sender<pb::AgentMessage>,
    rx: mpsc::UnboundedReceiver<pb::SchedulerMessage>,
}

pub(crate) struct Node {
    pub(crate) name: String,
    register: pb::Register,
    session: Option<Session>,
    /// Job events sent (seq), and the highest command seq applied.
    event_seq: u64,
    applied: u64,
    pub(crate) machine: Machine,
}

/// What a node was told to do in one step.
#[derive(Debug, Default)]
pub(crate) struct Commands {
    /// (job id, attempt id) to start.
    pub(crate) run: Vec<(String, String)>,
    pub(crate) power_down: bool,
    pub(crate) stops: usize,
}

impl Node {
    pub(crate) fn new(name: String, pool: &greenfill_core::cluster::Pool) -> Node {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "memory sizes")]
        let memory_bytes = (pool.memory_gib * GIB) as u64;
        let register = pb::Register {
            node_name: name.clone(),
            pool: pool.name.clone(),
            zone: pool.zone.clone().unwrap_or_default(),
            cpu_cores: pool.cores,
            memory_bytes,
            power_sources: vec![pb::PowerSource::Model as i32],
            agent_version: format!("greenfill-replay/{}", env!("CARGO_PKG_VERSION")),
            instance_id: format!("replay-{name}"),
            ..pb::Register::default()
        };
        Node { name, register, session: None, event_seq: 0, applied: 0, machine: Machine::On }
    }

    pub(crate) fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// Open a session: Register (no jobs run on a machine that was off or new).
    pub(crate) async fn register(&mut self, client: &mut AgentClient) -> Result<()> {
        let (tx, out) = mpsc::channel(256);
        let reg = pb::Register { last_command_seq: self.applied, ..self.register.clone() };
        tx.send(msg(0, self.applied, In::Register(reg))).await.context("session closed")?;
        let mut input = client
            .session(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .with_context(|| format!("{}: the scheduler refused the session", self.name))?
            .into_inner();
        let (fwd, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(m)) = input.message().await {
                if fwd.send(m).is_err() {
                    break;
                }
            }
        });
        self.session = Some(Session { tx, rx });
        self.machine = Machine::On;
        Ok(())
    }

    async fn send(&mut self, m: pb::AgentMessage) -> Result<()> {
        let s = self.session.as_ref().with_context(|| format!("{}: no session", self.name))?;
        s.tx.send(m).await.with_context(|| format!("{}: the session closed", self.name))
    }

    /// A job event, numbered.
    pub(crate) async fn status(&mut self, mut s: pb::JobStatus, at: i64) -> Result<()> {
        self.event_seq += 1;
        s.time = Some(prost_types::Timestamp { seconds: at, nanos: 0 });
        let m = msg(self.event_seq, self.applied, In::JobStatus(s));
        self.send(m).await
    }

    /// One telemetry sample stamped `at`.
    pub(crate) async fn telemetry(&mut self, at: i64, online_cpu: f64, online_mem_gib: f64, batch: f64) -> Result<()> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "memory sizes")]
        let online_memory_bytes = (online_mem_gib * GIB) as u64;
        let sample = pb::TelemetrySample {
            time: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
            node_cpu_cores: Some(online_cpu + batch),
            online_cpu_cores: Some(online_cpu),
            online_memory_bytes: Some(online_memory_bytes),
            batch_cpu_cores: Some(batch),
            ..pb::TelemetrySample::default()
        };
        let m = msg(0, self.applied, In::Telemetry(sample));
        self.send(m).await
    }

    /// Receive every command up to `upto` (what the scheduler says it sent).
    pub(crate) async fn commands(&mut self, upto: u64) -> Result<Commands> {
        let mut c = Commands::default();
        while self.applied < upto {
            let s = self.session.as_mut().with_context(|| format!("{}: no session", self.name))?;
            let m = tokio::time::timeout(COMMAND_WAIT, s.rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("{}: command {upto} not received in {COMMAND_WAIT:?}", self.name))?
                .with_context(|| format!("{}: the scheduler closed the session", self.name))?;
            if m.seq == 0 || m.seq <= self.applied {
                continue;
            }
            self.applied = m.seq;
            match m.body {
                Some(Out::Run(r)) => c.run.push((r.job_id, r.attempt_id)),
                Some(Out::PowerDown(_)) => c.power_down = true,
                Some(Out::Stop(_)) => c.stops += 1,
                _ => {}
            }
        }
        Ok(c)
    }

    /// PowerDown: acknowledge it and go silent; the machine draws power
    /// until `off_at`.
    pub(crate) async fn suspend(&mut self, off_at: i64) -> Result<()> {
        let m = pb::AgentMessage { seq: 0, ack: self.applied, body: None };
        self.send(m).await?;
        self.session = None;
        self.machine = Machine::Suspending { off_at };
        Ok(())
    }
}

fn msg(seq: u64, ack: u64, body: In) -> pb::AgentMessage {
    pb::AgentMessage { seq, ack, body: Some(body) }
}

pub(crate) type AgentClient = pb::agent_service_client::AgentServiceClient<tonic::transport::Channel>;

/// The node a magic packet wakes, by its MAC (6 × 0xff, then the MAC 16 times).
pub(crate) fn woken_mac(packet: &[u8]) -> Option<[u8; 6]> {
    if packet.len() < 102 || packet[..6].iter().any(|&b| b != 0xff) {
        return None;
    }
    let mac: [u8; 6] = packet[6..12].try_into().ok()?;
    packet[6..102].chunks(6).all(|c| c == mac).then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magic_packet_names_its_mac_and_anything_else_none() {
        let mac = [0x02, 0x67, 0, 0, 0, 7];
        let mut p = vec![0xff; 6];
        for _ in 0..16 {
            p.extend_from_slice(&mac);
        }
        assert_eq!(woken_mac(&p), Some(mac));
        p[50] ^= 1;
        assert_eq!(woken_mac(&p), None);
        assert_eq!(woken_mac(&[0xff; 20]), None);
    }
}
