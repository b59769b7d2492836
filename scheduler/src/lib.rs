//! greenfill's scheduler service: gRPC edges, durable state, and the planning
//! loop around `greenfill-planner` (which the simulator calls unchanged).

pub mod service;
pub mod store;
