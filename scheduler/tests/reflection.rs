//! Server reflection in both versions, asked by a client that speaks only
//! `v1alpha`: Python's grpcio-reflection (as Postman and older grpcurl do).
//! `scripts/setup.sh` installs it in a venv under the tools directory.

use greenfill_scheduler::service::{self, Config};

fn python() -> Option<std::path::PathBuf> {
    let tools = std::env::var_os("GREENFILL_TOOLS")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/greenfill/tools")))?;
    let py = tools.join("grpc/bin/python");
    py.exists().then_some(py)
}

/// Lists services through `grpc_reflection.v1alpha` only.
const LIST: &str = r"
import sys, grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(sys.argv[1]))
for s in db.get_services():
    print(s)
print('method:', db.FindFileContainingSymbol('greenfill.v1.JobService').name)
";

#[tokio::test]
async fn a_v1alpha_only_client_lists_the_services() {
    let Some(py) = python() else {
        greenfill_core::testing::cannot_run("reflection", "grpcio-reflection is not installed (scripts/setup.sh)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        insecure_local: true,
        ..Config::default()
    };
    let srv = service::start(c).await.unwrap();
    let addr = srv.addr.to_string();
    let out = tokio::process::Command::new(py).args(["-c", LIST, &addr]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for s in
        ["greenfill.v1.JobService", "greenfill.v1.PlanService", "greenfill.v1.AgentService", "grpc.health.v1.Health"]
    {
        assert!(stdout.lines().any(|l| l == s), "{s} not listed:\n{stdout}");
    }
    assert!(stdout.contains("method: greenfill/v1/jobs.proto"), "{stdout}");
    srv.stop().await.unwrap();
}
