//! greenfill's gRPC contract, package `greenfill.v1`, generated at build time from
//! `proto/greenfill/v1/*.proto`.
//!
//! Architecture invariant: only the gRPC edges (the scheduler's service modules, the
//! agent's connection, the CLI's client) depend on this crate; the planner,
//! forecaster and simulator never see these types.

#![allow(unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic, reason = "generated code")]

pub mod v1 {
    tonic::include_proto!("greenfill.v1");
}

/// The encoded `FileDescriptorSet` of every greenfill.v1 file (and the well-known
/// types they import), for gRPC server reflection and dynamic clients.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/greenfill_v1_descriptor.bin"));

impl v1::LedgerRow {
    /// One finished job's ledger as a row of one job (its keys left empty).
    pub fn of_job(l: &v1::JobLedger) -> v1::LedgerRow {
        v1::LedgerRow {
            jobs: 1,
            energy_kwh: l.energy_kwh,
            carbon_g: l.carbon_g,
            counterfactual_carbon_g: l.counterfactual_carbon_g,
            saved_g: l.saved_g,
            embodied_g: l.embodied_g,
            cost: l.cost,
            saved_cost: l.saved_cost,
            currency: l.currency.clone(),
            ..v1::LedgerRow::default()
        }
    }

    /// Add `other`'s sums to this row's (the scheduler's totals and the CLI's
    /// regrouping use this one rule); the currency is the first one seen.
    pub fn add(&mut self, other: &v1::LedgerRow) {
        self.jobs += other.jobs;
        self.energy_kwh += other.energy_kwh;
        self.carbon_g += other.carbon_g;
        self.counterfactual_carbon_g += other.counterfactual_carbon_g;
        self.saved_g += other.saved_g;
        self.embodied_g += other.embodied_g;
        self.cost += other.cost;
        self.saved_cost += other.saved_cost;
        if self.currency.is_empty() {
            self.currency.clone_from(&other.currency);
        }
    }
}
