//! `greenfill-agent`: runs on every node.

use anyhow::Result;
use clap::{Parser, Subcommand};
use greenfill_agent::telemetry::LinearPowerModel;
use greenfill_agent::{Roots, Sampler};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "greenfill-agent", version, about = "greenfill's node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print telemetry samples of this machine: node CPU and memory, pressure, the
    /// cgroup version(s) found, and power with its source (rapl or model).
    Sample {
        /// One sample (taken over --interval) and exit.
        #[arg(long)]
        once: bool,
        /// Time between samples; rates (CPU, power) are over this interval.
        #[arg(long, default_value = "1s", value_parser = interval)]
        interval: Duration,
        /// JSON, one object per sample.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "/proc", env = "GREENFILL_PROC_ROOT")]
        proc_root: PathBuf,
        #[arg(long, default_value = "/sys/fs/cgroup", env = "GREENFILL_CGROUP_ROOT")]
        cgroup_root: PathBuf,
        #[arg(long, default_value = "/sys/class/powercap", env = "GREENFILL_POWERCAP_ROOT")]
        powercap_root: PathBuf,
        /// Power model where no sensor exists: watts per CPU at idle and at full load.
        #[arg(long, default_value_t = 0.74)]
        idle_w_per_cpu: f64,
        #[arg(long, default_value_t = 3.5)]
        max_w_per_cpu: f64,
        /// Also read every child cgroup of this parent (relative to the cgroup
        /// root, e.g. kubepods.slice) and report their totals.
        #[arg(long)]
        watch: Option<PathBuf>,
    },
}

fn interval(s: &str) -> Result<Duration, String> {
    let secs = s
        .strip_suffix("ms")
        .map(|m| m.parse::<f64>().map(|v| v / 1000.0))
        .unwrap_or_else(|| s.trim_end_matches('s').parse::<f64>());
    match secs {
        Ok(v) if v > 0.0 && v < 3600.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("`{s}` is not an interval between 1ms and 1h (e.g. 1s, 500ms)")),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sample {
            once,
            interval,
            json,
            proc_root,
            cgroup_root,
            powercap_root,
            idle_w_per_cpu,
            max_w_per_cpu,
            watch,
        } => {
            let roots = Roots { proc: proc_root, cgroup: cgroup_root, powercap: powercap_root };
            let mut sampler = Sampler::new(roots, LinearPowerModel { idle_w_per_cpu, max_w_per_cpu });
            if let Some(w) = watch {
                sampler.watch(w);
            }
            sampler.sample();
            loop {
                std::thread::sleep(interval);
                let s = sampler.sample();
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    let n = &s.node;
                    let gib = |b: Option<u64>| {
                        b.map_or_else(|| "?".into(), |b| format!("{:.2}", b as f64 / f64::from(1u32 << 30)))
                    };
                    println!(
                        "cpu {} of {} cores | mem {} of {} GiB | cgroup {:?} | power {}",
                        n.cpu_cores_used.map_or_else(|| "?".into(), |c| format!("{c:.2}")),
                        n.cpus.map_or_else(|| "?".into(), |c| c.to_string()),
                        gib(n.memory_used_bytes),
                        gib(n.memory_total_bytes),
                        s.cgroup.version,
                        s.power
                            .iter()
                            .map(|p| format!("{} {:.1} W ({:?})", p.component, p.watts, p.source))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                if once {
                    return Ok(());
                }
            }
        }
    }
}
