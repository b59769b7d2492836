//! Image jobs end to end with real parts: a real `containerd` (with runc), a
//! real OCI registry on loopback (Debian's `docker-registry`, one open and one
//! behind htpasswd), an image built here from `busybox-static` with `umoci` and
//! pushed with `skopeo` (no network), and the real scheduler, agent and CLI.
//! `scripts/setup.sh` installs all of them; they need root (runc, cgroups).

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

use greenfill_benches::testbed::{REG_PASSWORD, World, free_port, missing, run};
use std::process::Command;

/// Root and every tool, or a printed reason (a failure under CI, where setup installs them).
fn can_run(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    match missing() {
        Some(why) => {
            greenfill_core::testing::cannot_run(test, &why);
            false
        }
        None => true,
    }
}

/// The reason of job `id`'s requeue, from the scheduler's log (the job is
/// planned again at once, which replaces its reason).
fn requeue_reason(c: &Cluster, id: &str) -> String {
    let log = std::fs::read_to_string(c.dir.path().join("scheduler.log")).unwrap();
    log.lines()
        .find(|l| l.contains(id) && l.contains("requeued"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no requeue of {id} in the scheduler's log:\n{log}"))
}

fn job<'a>(jobs: &'a [Value], id: &str) -> &'a Value {
    jobs.iter().find(|j| j["id"] == id).unwrap_or_else(|| panic!("job {id} not listed: {jobs:#?}"))
}

fn done(c: &Cluster, id: &str, limit: Duration) -> Value {
    let jobs = c.wait_until(&format!("job {id} finished"), limit, |jobs| {
        jobs.iter().any(|j| j["id"] == id && ["succeeded", "failed", "cancelled"].contains(&state(j)))
    });
    job(&jobs, id).clone()
}

fn log(c: &Cluster, id: &str, ext: &str) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("agent/logs/{id}-1.{ext}"))).unwrap_or_default()
}

/// CPU seconds of a job's cgroup, from the host's accounting.
fn cgroup_cpu_seconds(c: &Cluster, attempt: &str) -> Option<f64> {
    let rel = format!("{}/{attempt}", c.batch_root);
    for h in ["cpuacct", "cpu,cpuacct"] {
        if let Ok(s) = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(h).join(&rel).join("cpuacct.usage")) {
            return s.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
        }
    }
    let stat = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(&rel).join("cpu.stat")).ok()?;
    let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
    usec.trim().parse::<f64>().ok().map(|us| us / 1e6)
}

#[test]
fn image_jobs_run_in_their_cgroups_with_limits_logs_exit_codes_and_survive_an_agent_kill() {
    if !can_run("image_jobs") {
        return;
    }
    let w = World::start();
    let mut c = Cluster::with_agent_args("images", w.agent_args(&[]));
    let image = w.image(w.open_port);
    let sub = |args: &[&str]| {
        let base = ["--duration", "30s", "--image", &image];
        let memory: &[&str] = if args.contains(&"--memory") { &[] } else { &["--memory", "64Mi"] };
        c.submit(&[&base[..], memory, args].concat())
    };
    // Exit code and stdout come back; the image's env and the job's are both
    // there; it runs as nobody in its cgroup under the batch root (which the
    // guard's cuts hold).
    let script = "echo hello-from-image; echo FROM_IMAGE=$FROM_IMAGE JOB=$JOB; id -u; cat /etc/greenfill-layer; cat /proc/self/cgroup; exit 3";
    let first = sub(&["--cpu", "0.2", "--pull", "always", "--env", "JOB=set", "--", "/bin/sh", "-c", script]);
    // The image's own command when the job gives none (/bin/sh, empty stdin:
    // exit 0); pulled again at the same time as the first job's pull.
    let own = sub(&["--cpu", "0.2", "--pull", "always"]);
    let j = done(&c, &first, Duration::from_secs(90));
    assert_eq!((state(&j), &j["exit_code"]), ("failed", &Value::from(3)), "{j}");
    let out = log(&c, &first, "out");
    assert!(out.starts_with("hello-from-image\nFROM_IMAGE=yes JOB=set\n65534\nsecond layer\n"), "{out}");
    // The layers were unpacked under the chain ids containerd's own client computes.
    run(Command::new("ctr").arg("-a").arg(&w.socket).args([
        "-n",
        "gf-verify",
        "images",
        "pull",
        "--plain-http",
        &image,
    ]));
    let ours = w.committed("greenfill");
    assert_eq!(ours.len(), 2, "two layers: {ours:?}");
    assert_eq!(ours, w.committed("gf-verify"), "our chain ids against ctr's");
    let cgroup = format!(":/{}/{first}-1", c.batch_root);
    assert!(out.lines().any(|l| l.contains(":cpu") && l.ends_with(&cgroup)), "not in its cgroup {cgroup}: {out}");

    // Over its memory limit: OOM-killed, and said so.
    let oom =
        sub(&["--cpu", "0.5", "--memory", "32Mi", "--", "/bin/sh", "-c", "head -c 256m /dev/zero | tail -c 200m"]);
    // Half a core, measured from its cgroup while it spins.
    let half = sub(&["--cpu", "0.5", "--", "/bin/sh", "-c", "timeout 8 yes > /dev/null; echo spun"]);
    c.wait_until("the half-core job running", Duration::from_secs(60), |jobs| state(job(jobs, &half)) == "running");
    let attempt = format!("{half}-1");
    std::thread::sleep(Duration::from_millis(1500));
    let (t0, u0) = (Instant::now(), cgroup_cpu_seconds(&c, &attempt).expect("the job's cgroup accounting"));
    std::thread::sleep(Duration::from_secs(4));
    let u1 = cgroup_cpu_seconds(&c, &attempt).expect("the job's cgroup accounting");
    let cores = (u1 - u0) / t0.elapsed().as_secs_f64();
    assert!((0.35..=0.6).contains(&cores), "a 0.5-core image job used {cores:.3} cores");
    assert_eq!(state(&done(&c, &own, Duration::from_secs(60))), "succeeded");
    let j = done(&c, &oom, Duration::from_secs(60));
    assert!(j["reason"].as_str().unwrap_or_default().contains("OOM"), "{j}");
    assert_eq!(state(&done(&c, &half, Duration::from_secs(60))), "succeeded");

    // The agent SIGKILLed mid-job and restarted: the container ran on, is found
    // again by its label, and its exit is collected; never started twice.
    let long = sub(&["--cpu", "0.2", "--", "/bin/sh", "-c", "echo before; sleep 5; echo after; exit 7"]);
    c.wait_until("the long job running", Duration::from_secs(60), |jobs| state(job(jobs, &long)) == "running");
    c.agent.take();
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent();
    let j = done(&c, &long, Duration::from_secs(90));
    assert_eq!((&j["exit_code"], &j["attempts"]), (&Value::from(7), &Value::from(1)), "{j}");
    assert_eq!(log(&c, &long, "out"), "before\nafter\n", "the logger outlived the agent");
    let agent_log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(agent_log.contains("re-adopted a job"), "{agent_log}");
    w.assert_nothing_left();
    for id in [&first, &own, &oom, &half, &long] {
        assert!(
            !Path::new("/sys/fs/cgroup/memory").join(&c.batch_root).join(format!("{id}-1")).exists(),
            "cgroup of {id} left"
        );
    }
}

#[test]
fn image_jobs_that_cannot_start_fail_naming_the_image_and_the_cause() {
    if !can_run("image_failures") {
        return;
    }
    let w = World::start();
    let down = free_port();
    let c = Cluster::with_agent_args("imgfail", w.agent_args(&[down]));
    let sub = |image: &str, extra: &[&str]| {
        let base = ["--cpu", "0.2", "--memory", "64Mi", "--duration", "30s", "--image", image];
        c.submit(&[&base[..], extra, &["--", "/bin/sh", "-c", "echo ran"]].concat())
    };
    let missing = format!("127.0.0.1:{}/greenfill/nothere:1", w.open_port);
    let refused = w.image(w.auth_port);
    let unreachable = format!("127.0.0.1:{down}/greenfill/bb:1");
    // A cause in the spec or the registry's refusal fails the job; a registry
    // that is down may come back, so that job is requeued with a backoff.
    let cases = [
        (sub(&missing, &[]), missing.clone(), vec!["MANIFEST_UNKNOWN", "manifest unknown", "not found"], "failed"),
        (sub(&refused, &[]), refused.clone(), vec!["401", "nauthorized", "authentication"], "failed"),
        (sub(&unreachable, &[]), unreachable.clone(), vec!["connect", "refused"], "queued"),
        (
            sub(&w.image(w.open_port), &["--pull", "never"]),
            w.image(w.open_port),
            vec!["pull policy is never"],
            "failed",
        ),
    ];
    for (id, image, causes, end) in &cases {
        // A requeued job is planned again at once (to start after its backoff):
        // its reason is in the job's history.
        let back = ["queued", "planned"];
        let jobs = c.wait_until(&format!("job {id} {end}"), Duration::from_secs(60), |jobs| {
            jobs.iter().any(|j| {
                j["id"] == id.as_str()
                    && j["attempts"] == 1
                    && if *end == "queued" { back.contains(&state(j)) } else { state(j) == *end }
            })
        });
        let reason = if *end == "queued" {
            requeue_reason(&c, id)
        } else {
            job(&jobs, id)["reason"].as_str().unwrap_or_default().to_owned()
        };
        let reason = reason.as_str();
        assert!(reason.contains(image.as_str()), "the reason names the image {image}: {reason}");
        assert!(causes.iter().any(|k| reason.contains(k)), "the reason names the cause ({causes:?}): {reason}");
        assert!(!reason.contains(REG_PASSWORD), "a secret in a reason: {reason}");
        if *end == "queued" {
            assert!(reason.contains("attempt 1 of 3") && reason.contains("may start again in"), "{reason}");
        }
    }
    // With the node's credential for that registry, the same image runs.
    let ok = sub(&refused, &["--registry-credential", "e2e"]);
    let j = done(&c, &ok, Duration::from_secs(60));
    assert_eq!(state(&j), "succeeded", "{j}");
    assert_eq!(log(&c, &ok, "out"), "ran\n");
    let agent_log = std::fs::read_to_string(c.dir.path().join("agent.log")).unwrap();
    assert!(!agent_log.contains(REG_PASSWORD), "the credential was logged");
    w.assert_nothing_left();
    drop(c);

    // No containerd at the socket: image jobs are refused naming it, the node
    // stays healthy, and process jobs run on.
    let nowhere = w.dir.path().join("no-containerd.sock");
    let c = Cluster::with_agent_args("nosock", vec!["--containerd-socket".into(), nowhere.display().to_string()]);
    let id = c.submit(&[
        "--cpu",
        "0.2",
        "--memory",
        "64Mi",
        "--duration",
        "30s",
        "--image",
        &w.image(w.open_port),
        "--",
        "/bin/true",
    ]);
    // containerd may come back: requeued with a backoff, naming the socket and the image.
    c.wait_until("the image job requeued", Duration::from_secs(60), |jobs| {
        jobs.iter().any(|j| j["id"] == id.as_str() && ["queued", "planned"].contains(&state(j)) && j["attempts"] == 1)
    });
    let reason = requeue_reason(&c, &id);
    assert!(reason.contains(&nowhere.display().to_string()) && reason.contains(&w.image(w.open_port)), "{reason}");
    assert!(reason.contains("may start again in"), "{reason}");
    let id = c.submit(&["--cpu", "0.2", "--memory", "64Mi", "--duration", "30s", "--", "sh", "-c", "exit 0"]);
    assert_eq!(state(&done(&c, &id, Duration::from_secs(60))), "succeeded");
    let nodes = c.greenfill(&["nodes", "--json"]).unwrap();
    assert!(nodes.contains("\"connected\": true"), "{nodes}");
}
