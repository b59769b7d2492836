//! `benches/gpu-check.sh`: here there is no GPU, so it says so and exits 0; with
//! the fake NVML it walks the path it walks on a real card (inventory, a cap to
//! the minimum read back, the limit restored) through the agent's own code.

use std::process::Command;

/// The workspace's debug `greenfill-agent` (nextest builds every binary first).
fn agent() -> std::path::PathBuf {
    let me = std::env::current_exe().unwrap();
    me.ancestors().skip(1).take(3).map(|d| d.join("greenfill-agent")).find(|p| p.exists()).unwrap()
}

fn check(env: &[(&str, &str)]) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/gpu-check.sh");
    let out = Command::new(script).env("AGENT", agent()).envs(env.iter().copied()).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn gpu_check_says_no_gpu_here_and_walks_the_cap_round_trip_on_the_fake() {
    let has_nvml = Command::new("sh").args(["-c", "ldconfig -p | grep -q libnvidia-ml"]).status().unwrap().success();
    if !has_nvml {
        let (ok, out) = check(&[]);
        assert!(ok, "{out}");
        assert!(out.starts_with("no GPU"), "{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("gpus.json");
    let gpu = serde_json::json!({
        "index": 0, "uuid": "GPU-check-0", "model": "NVIDIA L4", "minor": 0,
        "memory_total_bytes": 25_769_803_776u64, "memory_used_bytes": 0, "utilisation_pct": 0,
        "power_w": 16.0, "power_limit_w": 72.0, "power_limit_min_w": 40.0, "power_limit_max_w": 72.0,
        "energy_j": null, "processes": []
    });
    std::fs::write(&fake, serde_json::to_vec(&[gpu]).unwrap()).unwrap();
    let (ok, out) = check(&[("GREENFILL_FAKE_GPUS", fake.to_str().unwrap())]);
    assert!(ok, "{out}");
    assert!(out.contains("GPU 0 GPU-check-0 NVIDIA L4"), "{out}");
    if nix_is_root() {
        assert!(out.contains("GPU 0 cap: 72 W -> set 40 W, read back 40 W, restored 72 W"), "{out}");
        assert!(out.contains("1 GPU(s) checked, 0 failed"), "{out}");
    }
    let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&fake).unwrap()).unwrap();
    assert_eq!(after[0]["power_limit_w"], 72.0, "the limit is back");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}
