//! A run whose decisions come from outside the simulator — the real scheduler
//! service, in `greenfill sim replay` — on the simulator's machines: the same
//! jobs in steps, the same local guard, the same accounting as every policy's
//! run ([`crate::engine`]'s `State` and `Meter`), so the two runs' figures differ
//! only by what was decided.

use crate::engine::{Meter, Policy, PolicyResult, State, guard_for};
use crate::guard::GuardModel;
use crate::inputs::Inputs;
use crate::scenario::Resolved;

#[derive(Debug)]
pub struct Fleet<'a> {
    inp: &'a Inputs,
    st: State,
    guard: Option<GuardModel>,
    meter: Meter,
    res: PolicyResult,
    sh: f64,
    clock: std::time::Instant,
}

/// A job that finished, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub job: usize,
    pub node: usize,
}

impl<'a> Fleet<'a> {
    /// The scenario's machines, each with the guard as greenfill runs it.
    pub fn new(inp: &'a Inputs, r: &Resolved) -> Fleet<'a> {
        #[allow(clippy::cast_precision_loss, reason = "a step in seconds")]
        let sh = inp.step_s as f64 / 3600.0;
        Fleet {
            inp,
            st: State::new(inp),
            guard: guard_for(r, Policy::Greenfill, inp.nodes(), inp.step_s),
            meter: Meter::new(r),
            res: PolicyResult::empty(inp),
            sh,
            clock: std::time::Instant::now(),
        }
    }

    /// Step `t` begins: the jobs due to end now leave their nodes.
    pub fn end_step(&mut self, t: usize) -> Vec<Ended> {
        let ended = self.st.end_step(self.inp, t, &mut self.res, self.sh);
        ended.into_iter().map(|(job, node)| Ended { job, node }).collect()
    }

    /// `job` starts on `node` at step `t`.
    pub fn start(&mut self, job: usize, node: usize, t: usize) {
        self.st.start(self.inp, job, node, t);
    }

    /// Jobs running on `node` now.
    pub fn running_on(&self, node: usize) -> &[usize] {
        &self.st.on_node[node]
    }

    /// Batch cores running on `node` now.
    pub fn batch_cpu(&self, node: usize) -> f64 {
        self.st.batch_cpu[node]
    }

    /// Step `t` ends: the guard, energy and carbon of the nodes that are powered;
    /// `woke` are the nodes whose resume began in this step.
    pub fn account(&mut self, t: usize, powered: &[bool], woke: &[usize]) {
        let row = self.meter.account(self.inp, &mut self.st, self.guard.as_mut(), t, powered, woke, &mut self.res);
        self.res.steps.push(row);
    }

    /// The run's totals.
    pub fn finish(mut self, suspends: usize, resumes: usize) -> PolicyResult {
        (self.res.suspends, self.res.resumes) = (suspends, resumes);
        self.meter.close(self.inp, &self.st, &mut self.res);
        self.res.run_ms = self.clock.elapsed().as_secs_f64() * 1000.0;
        self.res
    }
}
