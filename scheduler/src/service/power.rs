//! Carrying out the plan's powered nodes: each planning round runs the power-state
//! machine ([`greenfill_planner::power`], the one the simulator runs) over the
//! nodes of every sleepable pool, commits the new states, and only then calls the
//! pool's driver. A decision is durable before it is acted on, and a node already
//! `suspending` or `resuming` is never called again for it: after a crash the
//! machine reconciles (a node that registers is `on`, one that stays silent is
//! `off`, a timeout is `failed`) instead of repeating the call.

use super::config::{DriverSpec, PoolPower};
use super::{Inner, State, is_queued, is_terminal};
use crate::store::Write;
use greenfill_planner::power::{self, Call, NodePower, PowerState, Seen, Transition};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A driver call's outcome: `Err` holds the driver's answer, naming what failed.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Puts a node to sleep or wakes it. A driver answers once the request was
/// accepted (and, where it can tell, carried out); the machine still waits to
/// see the node go silent or register.
pub trait Driver: Send + Sync {
    fn call(self: Arc<Self>, node: String, call: Call) -> CallFuture;
}

/// The `exec` driver: a site's own command with the node name appended, as
/// Slurm's `SuspendProgram` and `ResumeProgram`. Exit 0 is success; anything
/// else (or the timeout) fails the node with the command's stderr.
#[derive(Debug)]
pub struct Exec {
    pub suspend: Vec<String>,
    pub resume: Vec<String>,
    pub timeout: Duration,
}

impl Driver for Exec {
    fn call(self: Arc<Self>, node: String, call: Call) -> CallFuture {
        Box::pin(async move {
            let argv = match call {
                Call::Suspend => &self.suspend,
                Call::Resume => &self.resume,
            };
            let shown = format!("{} {node}", argv.join(" "));
            let (program, args) = argv.split_first().ok_or("no command configured")?;
            let run = tokio::process::Command::new(program)
                .args(args)
                .arg(&node)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            let out = match tokio::time::timeout(self.timeout, run).await {
                Err(_) => return Err(format!("`{shown}` did not finish within {} s", self.timeout.as_secs())),
                Ok(Err(e)) => return Err(format!("`{shown}`: {e}")),
                Ok(Ok(out)) => out,
            };
            if out.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("`{shown}` exited with {}: {tail}", out.status))
        })
    }
}

/// Wake-on-LAN: the magic packet (6 × `FF`, then the MAC 16 times) sent by UDP,
/// how the `agent` driver wakes a machine whose agent suspended it.
#[derive(Debug)]
pub struct WakeOnLan {
    pub broadcast: std::net::SocketAddr,
    pub macs: BTreeMap<String, [u8; 6]>,
}

/// The 102-byte magic packet for `mac`.
pub fn magic_packet(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0xFF; 6];
    for _ in 0..16 {
        p.extend_from_slice(&mac);
    }
    p
}

impl Driver for WakeOnLan {
    fn call(self: Arc<Self>, node: String, call: Call) -> CallFuture {
        Box::pin(async move {
            if call != Call::Resume {
                return Err("Wake-on-LAN only wakes".into());
            }
            let mac = self.macs.get(&node).ok_or_else(|| format!("no MAC address for {node} in agent.macs"))?;
            let sock = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await.map_err(|e| format!("UDP socket: {e}"))?;
            sock.set_broadcast(true).map_err(|e| format!("UDP broadcast: {e}"))?;
            sock.send_to(&magic_packet(*mac), self.broadcast)
                .await
                .map_err(|e| format!("magic packet to {}: {e}", self.broadcast))?;
            Ok(())
        })
    }
}

/// The sleepable pools, with their policies and drivers.
#[derive(Default)]
pub struct PowerCtl {
    pub pools: BTreeMap<String, (PoolPower, Arc<dyn Driver>)>,
}

impl std::fmt::Debug for PowerCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.pools.iter().map(|(k, (p, _))| (k, &p.settings))).finish()
    }
}

impl PowerCtl {
    pub fn new(pools: BTreeMap<String, PoolPower>) -> anyhow::Result<PowerCtl> {
        let mut out = BTreeMap::new();
        for (name, p) in pools {
            let driver: Arc<dyn Driver> = match &p.driver {
                DriverSpec::Exec { suspend, resume } => {
                    Arc::new(Exec { suspend: suspend.clone(), resume: resume.clone(), timeout: p.call_timeout })
                }
                DriverSpec::Agent { broadcast, macs } => {
                    Arc::new(WakeOnLan { broadcast: *broadcast, macs: macs.clone() })
                }
                DriverSpec::Redfish(d) => Arc::new(
                    super::redfish::Redfish::new(d, p.call_timeout)
                        .map_err(|e| anyhow::anyhow!("pools {name:?}: power: {e}"))?,
                ),
            };
            out.insert(name, (p, driver));
        }
        Ok(PowerCtl { pools: out })
    }

    pub fn settings(&self, pool: &str) -> Option<&power::PowerSettings> {
        self.pools.get(pool).map(|(p, _)| &p.settings)
    }
}

/// A node's state for planning and dispatch: nodes of pools without
/// `[pools.power]` are always `on`.
pub fn state_of(inner: &Inner, node: &str) -> PowerState {
    inner.power.get(node).map_or(PowerState::On, |p| p.state)
}

/// After a restart, a node not heard from yet is taken to be as it was for this
/// long: its agent reconnects within its longest backoff (30 s). Without it a
/// node still suspending would look silent (off), reconnect (on), and be
/// suspended a second time for one decision.
pub const RECONNECT_GRACE_S: i64 = 45;

/// Per node: batch jobs running on it, and the plan's first start of new work
/// there. One pass over the jobs per round (not one per node).
fn work_by_node(inner: &Inner) -> HashMap<&str, (usize, Option<i64>)> {
    let mut out: HashMap<&str, (usize, Option<i64>)> = HashMap::new();
    for e in inner.jobs.values() {
        if !e.job.node.is_empty() && !is_queued(e.job.state) && !is_terminal(e.job.state) {
            out.entry(e.job.node.as_str()).or_default().0 += 1;
        }
        if is_queued(e.job.state)
            && let (Some(x), Some(at)) = (e.explanation.as_ref(), e.job.planned_start)
            && !x.node.is_empty()
        {
            let w = &mut out.entry(x.node.as_str()).or_default().1;
            *w = Some(w.map_or(at.seconds, |w| w.min(at.seconds)));
        }
    }
    out
}

/// What the round sees of one node.
fn seen(
    inner: &Inner,
    work: &HashMap<&str, (usize, Option<i64>)>,
    name: &str,
    t: i64,
    stale: i64,
    started_at: i64,
) -> Seen {
    let n = &inner.nodes[name];
    let present = n.session.is_some() && n.last_seen >= t - stale;
    let unknown = n.session.is_none() && n.registered_at < started_at && t - started_at < RECONNECT_GRACE_S;
    let registered_at = (present || unknown).then_some(n.registered_at);
    let (running, wanted_at) = work.get(name).copied().unwrap_or_default();
    Seen { registered_at, running, wanted_at }
}

/// A driver call decided this round.
struct Decided {
    pool: String,
    node: String,
    call: Call,
}

/// One round of every sleepable pool at `t`; returns the transitions made.
pub async fn round(st: &Arc<State>, t: i64) -> anyhow::Result<Vec<(String, Transition)>> {
    if st.power.pools.is_empty() {
        return Ok(Vec::new());
    }
    let stale = i64::try_from(st.config.planning.stale_after.as_secs()).unwrap_or(900);
    let (pending, calls, made) = {
        let mut inner = st.lock();
        let mut writes = Vec::new();
        let mut calls = Vec::new();
        let mut made = Vec::new();
        for (pool, (policy, _)) in &st.power.pools {
            let names: Vec<String> =
                inner.nodes.iter().filter(|(_, n)| n.register.pool == *pool).map(|(k, _)| k.clone()).collect();
            let seen: Vec<Seen> = {
                let work = work_by_node(&inner);
                names.iter().map(|n| seen(&inner, &work, n, t, stale, st.started_at)).collect()
            };
            let mut states: Vec<NodePower> = names
                .iter()
                .map(|n| inner.power.get(n).cloned().unwrap_or_else(|| NodePower::on(t, policy.exclude.contains(n))))
                .collect();
            let changes = power::step(&policy.settings, t, &mut states, &seen);
            for (name, s) in names.iter().zip(states) {
                if inner.power.get(name) != Some(&s) {
                    writes.push(Write::NodePower { name: name.clone(), body: serde_json::to_string(&s)? });
                    inner.power.insert(name.clone(), s);
                }
            }
            for c in changes {
                let node = names[c.node].clone();
                record(pool, &node, &c);
                if let Some(call) = c.call {
                    calls.push(Decided { pool: pool.clone(), node: node.clone(), call });
                }
                made.push((node, c));
            }
        }
        gauges(&inner, st);
        powered_seconds(&mut inner, st, t);
        (st.queue(writes, vec![]), calls, made)
    };
    // Durable first: a restart never repeats a call it cannot tell was made.
    st.finish(pending).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // On the virtual clock a call is made before the round returns, so the
    // replay sees it in the step that decided it.
    for d in calls {
        if greenfill_runtime::clock::is_virtual() {
            call(st.clone(), d).await;
        } else {
            let st2 = st.clone();
            st.tasks.spawn(call(st2, d));
        }
    }
    Ok(made)
}

fn record(pool: &str, node: &str, c: &Transition) {
    let (from, to) = (c.from.name(), c.to.name());
    if c.to == PowerState::Failed {
        tracing::warn!(pool, node, from, to, reason = %c.reason, "power transition failed");
    } else {
        tracing::info!(pool, node, from, to, reason = %c.reason, "power transition");
    }
    let result = if c.to == PowerState::Failed { "failed" } else { "ok" };
    metrics::counter!("greenfill_power_transitions_total", "to" => to, "result" => result).increment(1);
}

/// Nodes by pool and power state, and powered node-seconds.
fn gauges(inner: &Inner, st: &State) {
    for pool in st.power.pools.keys() {
        for s in PowerState::ALL {
            #[allow(clippy::cast_precision_loss, reason = "a count")]
            let n =
                inner.nodes.iter().filter(|(name, n)| n.register.pool == *pool && state_of(inner, name) == s).count()
                    as f64;
            metrics::gauge!("greenfill_nodes", "pool" => pool.clone(), "power_state" => s.name()).set(n);
        }
    }
}

/// Powered node-seconds of the sleepable pools since the last round.
fn powered_seconds(inner: &mut Inner, st: &State, t: i64) {
    let dt = inner.power_round_at.map_or(0, |last| (t - last).max(0));
    inner.power_round_at = Some(t);
    for pool in st.power.pools.keys() {
        let on =
            inner.nodes.iter().filter(|(name, n)| n.register.pool == *pool && state_of(inner, name).powered()).count();
        let secs = u64::try_from(dt).unwrap_or(0) * u64::try_from(on).unwrap_or(0);
        metrics::counter!("greenfill_powered_node_seconds_total", "pool" => pool.clone()).increment(secs);
    }
}

/// Call the driver outside the lock; an error fails the node with its answer.
/// The `agent` driver suspends through the node's own session: a `PowerDown`
/// command, kept until acknowledged like every command.
async fn call(st: Arc<State>, d: Decided) {
    let Some((policy, driver)) = st.power.pools.get(&d.pool) else { return };
    if d.call == Call::Suspend && matches!(policy.driver, DriverSpec::Agent { .. }) {
        let pending = {
            let mut inner = st.lock();
            let cmd = greenfill_proto::v1::PowerDown {
                reason: format!("power: {} suspends", d.pool),
                valid_until: Some(super::ts(super::now() + policy.settings.suspend_timeout_s)),
            };
            let body = greenfill_proto::v1::scheduler_message::Body::PowerDown(cmd);
            let writes: Vec<Write> = inner.command(&d.node, body).into_iter().collect();
            st.queue(writes, vec![])
        };
        if let Err(e) = st.finish(pending).await {
            tracing::error!(error = %e, "could not store a power-down command");
        }
        return;
    }
    let Err(why) = driver.clone().call(d.node.clone(), d.call).await else {
        tracing::info!(node = %d.node, call = ?d.call, "driver call done");
        return;
    };
    let pending = {
        let mut inner = st.lock();
        let Some(p) = inner.power.get_mut(&d.node) else { return };
        let Some(c) = p.driver_failed(0, super::now(), &why) else { return };
        record(&d.pool, &d.node, &c);
        let Ok(body) = serde_json::to_string(&*p) else { return };
        st.queue(vec![Write::NodePower { name: d.node.clone(), body }], vec![])
    };
    if let Err(e) = st.finish(pending).await {
        tracing::error!(error = %e, "could not store a failed power call");
    }
    st.replan.notify_one();
}
