//! The OCI runtime spec of an image job's container: the image's process
//! (or the job's command) as the job's user, never root by default, with no
//! capabilities and no new privileges; its own pid, mount, ipc and uts
//! namespaces, the host's network (as a batch process on the host has); and
//! the job's cgroup, which the runner has made with its limits.

use crate::containerd::{ImageConfig, Launch};
use serde_json::{Value, json};

/// A job's PATH unless the image or the spec sets one.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// argv: the job's command, else the image's entrypoint and cmd.
pub(crate) fn argv(job: &Launch, image: &ImageConfig) -> Vec<String> {
    if job.shell {
        return vec!["/bin/sh".into(), "-c".into(), job.argv.join(" ")];
    }
    if job.argv.is_empty() { image.entrypoint.iter().chain(&image.cmd).cloned().collect() } else { job.argv.clone() }
}

/// The image's env, then the job's (the job's wins), with a PATH.
pub(crate) fn env(job: &Launch, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => env.push((k.to_owned(), v.to_owned())),
    };
    for kv in std::iter::once(DEFAULT_PATH).chain(image.env.iter().map(String::as_str)) {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    for (k, v) in &job.env {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": kind, "source": source, "options": options})
}

pub(crate) fn runtime_spec(job: &Launch, image: &ImageConfig) -> Value {
    let cwd = job
        .cwd
        .as_ref()
        .map(|p| p.display().to_string())
        .or_else(|| (!image.working_dir.is_empty()).then(|| image.working_dir.clone()))
        .unwrap_or_else(|| "/".into());
    let no_caps: [&str; 0] = [];
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    // The host's name resolution, read-only, as the host network is the job's.
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if std::path::Path::new(f).exists() {
            mounts.push(mount(f, "bind", f, &["rbind", "ro", "nosuid", "nodev", "noexec"]));
        }
    }
    let hostname: String = job.id.chars().take(63).collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": job.uid, "gid": job.gid},
            "args": argv(job, image),
            "env": env(job, image),
            "cwd": cwd,
            "capabilities": {"bounding": no_caps, "effective": no_caps, "permitted": no_caps, "inheritable": no_caps, "ambient": no_caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            // Absolute: under each hierarchy's root, the cgroup the runner made.
            "cgroupsPath": format!("/{}", job.cgroup.display()),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::{ImageRef, Pull};
    use std::path::Path;

    fn launch(image: &ImageRef, argv: &[String], env: &[(String, String)]) -> Launch {
        Launch {
            id: "a1".into(),
            image: image.clone(),
            argv: argv.to_vec(),
            shell: false,
            env: env.to_vec(),
            cwd: None,
            uid: 65_534,
            gid: 65_534,
            cgroup: Path::new("greenfill/batch/a1").to_owned(),
            log_dir: Path::new("/tmp").to_owned(),
            log_cap_bytes: 10,
        }
    }

    #[test]
    fn the_command_replaces_the_image_entrypoint_and_env_layers_job_over_image() {
        let image = ImageRef { reference: "r/x:1".into(), pull: Pull::IfNotPresent, credential: None };
        let cfg = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["arg".into()],
            env: vec!["PATH=/img/bin".into(), "A=image".into()],
            working_dir: "/work".into(),
            ..Default::default()
        };
        let none: Vec<String> = Vec::new();
        let env = [("A".to_owned(), "job".to_owned())];
        let spec = runtime_spec(&launch(&image, &none, &env), &cfg);
        assert_eq!(spec["process"]["args"], json!(["/entry", "arg"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/img/bin", "A=job"]));
        assert_eq!(spec["process"]["cwd"], "/work");
        assert_eq!(spec["process"]["user"], json!({"uid": 65_534, "gid": 65_534}));
        assert_eq!(spec["linux"]["cgroupsPath"], "/greenfill/batch/a1");
        let cmd = vec!["/bin/echo".to_owned(), "hi".to_owned()];
        let spec = runtime_spec(&launch(&image, &cmd, &[]), &cfg);
        assert_eq!(spec["process"]["args"], json!(["/bin/echo", "hi"]));
        assert_eq!(spec["process"]["capabilities"]["effective"], json!([]));
    }
}
