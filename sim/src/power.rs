//! The scheduler's power-state machine ([`greenfill_planner::power`]) over
//! simulated machines: a suspend takes `suspend_s` until the machine is silent,
//! a resume `wake_s` until it registers. A machine draws power in every state
//! but `off` (resuming and suspending at idle power: that is the wake's energy).
//! Always-on pools, and every pool under `dedicated`, are pinned.

use crate::inputs::Inputs;
use greenfill_planner::power::{self, Call, NodePower, PowerSettings, Seen};

/// The model's settings: the machine's, plus how long a simulated suspend takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimPower {
    pub settings: PowerSettings,
    pub suspend_s: i64,
}

/// Every node's power state, and the machines' answers still to come.
pub(crate) struct Power {
    model: SimPower,
    pub(crate) nodes: Vec<NodePower>,
    /// When each machine's current registration began; `None` = silent.
    registered: Vec<Option<i64>>,
    /// A machine's answer to a call: at this time it registers (`true`) or goes silent.
    due: Vec<Option<(i64, bool)>>,
    /// When the last plan (or the queue) wants new work on each node.
    pub(crate) wanted: Vec<Option<i64>>,
    pub(crate) suspends: usize,
    pub(crate) resumes: usize,
    /// Nodes resumed in the last step (their pools' `wake_wh` is spent then).
    pub(crate) woke: Vec<usize>,
}

impl Power {
    pub(crate) fn new(model: SimPower, inp: &Inputs, start: i64, pin_all: bool) -> Power {
        let n = inp.nodes();
        let nodes = (0..n).map(|i| NodePower::on(start, pin_all || inp.pools[inp.node_pool[i]].always_on)).collect();
        Power {
            model,
            nodes,
            registered: vec![Some(start); n],
            due: vec![None; n],
            wanted: vec![None; n],
            suspends: 0,
            resumes: 0,
            woke: Vec::new(),
        }
    }

    pub(crate) fn settings(&self) -> &PowerSettings {
        &self.model.settings
    }

    /// New work may start on `node` now.
    pub(crate) fn takes_work(&self, node: usize) -> bool {
        self.nodes[node].state.takes_work()
    }

    pub(crate) fn powered(&self, node: usize) -> bool {
        self.nodes[node].state.powered()
    }

    /// Seconds of idle power one power cycle costs beyond the work: the wake,
    /// the idle time before a suspend, the suspend.
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    pub(crate) fn cycle_s(&self) -> f64 {
        let s = &self.model.settings;
        (s.wake_s + s.suspend_after_s + self.model.suspend_s) as f64
    }

    /// Until when a node that may sleep stays powered whatever the plan does.
    pub(crate) fn powered_until(&self, node: usize, now: i64) -> Option<i64> {
        let n = &self.nodes[node];
        (!n.pinned).then(|| n.powered_until(&self.model.settings, now)).flatten()
    }

    /// Work started on `node` at `now`: its idle clock restarts.
    pub(crate) fn worked(&mut self, node: usize, now: i64) {
        self.nodes[node].last_work = now;
    }

    /// The machines' answers that are due, then one round of the machine per
    /// pool; calls are answered after the suspend or wake latency.
    pub(crate) fn step(&mut self, inp: &Inputs, now: i64, running: &[Vec<usize>]) {
        self.woke.clear();
        for (reg, due) in self.registered.iter_mut().zip(&mut self.due) {
            if let Some((at, up)) = *due
                && at <= now
            {
                *reg = up.then_some(at);
                *due = None;
            }
        }
        for (pool, &first) in inp.pool_first.iter().enumerate() {
            let count = inp.pools[pool].nodes as usize;
            let range = first..first + count;
            let seen: Vec<Seen> = range
                .clone()
                .map(|i| Seen {
                    registered_at: self.registered[i],
                    running: running[i].len(),
                    wanted_at: self.wanted[i],
                })
                .collect();
            let changes = power::step(&self.model.settings, now, &mut self.nodes[range], &seen);
            for t in changes {
                let node = first + t.node;
                match t.call {
                    Some(Call::Suspend) => {
                        self.suspends += 1;
                        self.due[node] = Some((now + self.model.suspend_s, false));
                    }
                    Some(Call::Resume) => {
                        self.resumes += 1;
                        self.woke.push(node);
                        self.due[node] = Some((now + self.model.settings.wake_s, true));
                    }
                    None => {}
                }
            }
        }
    }
}
