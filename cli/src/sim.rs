//! `greenfill sim …`

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use greenfill_sim::{Scenario, Summary, load, summarize, write_outputs};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Run a what-if scenario: every policy on the same traces; writes summary.json,
    /// timeseries.csv and report.html to --out and prints the savings.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Scenario TOML (see examples/*.toml).
    #[arg(long)]
    scenario: PathBuf,
    /// Output folder (default: out/<scenario file name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run(a) => run_one(&a),
    }
}

fn run_one(a: &RunArgs) -> Result<()> {
    let r = Scenario::load(&a.scenario)?;
    let inputs = load(&r)?;
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(1000 * r.scenario.policies.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} {msg:>10} [{bar:40}] {percent:>3}% {elapsed}")
                .context("progress style")?,
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut done = 0u64;
    let results = greenfill_sim::run(&r, &inputs, |policy, f| {
        bar.set_message(policy.to_owned());
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a share in [0, 1]")]
        bar.set_position(done + (f * 1000.0) as u64);
        if f >= 1.0 {
            done += 1000;
        }
    });
    bar.finish_and_clear();
    let summary = summarize(&r, &inputs, &results);
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("out")
            .join(a.scenario.file_stem().map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned()))
    });
    write_outputs(&out, &summary, &inputs, &results).with_context(|| format!("writing {}", out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
        println!("wrote {}/summary.json, timeseries.csv, report.html", out.display());
    }
    Ok(())
}

fn print_table(s: &Summary) {
    println!("{}: {} nodes, {} jobs, {} steps of {} s", s.scenario, s.nodes, s.jobs, s.steps, s.step_s);
    println!(
        "  {:<10} {:>10} {:>10} {:>9} {:>6} {:>6} {:>6} {:>9} {:>8}",
        "policy", "MWh", "t CO2", "util %", "done", "late", "unfin", "overload", "run s"
    );
    for (name, p) in &s.policies {
        println!(
            "  {:<10} {:>10.2} {:>10.3} {:>9.1} {:>6} {:>6} {:>6} {:>9} {:>8.1}",
            name,
            p.energy_kwh / 1000.0,
            p.carbon_kg / 1000.0,
            p.mean_cpu_util_powered * 100.0,
            p.jobs_completed,
            p.jobs_late,
            p.jobs_unfinished,
            p.online_overload_steps,
            p.run_ms / 1000.0
        );
    }
    let line = |what: &str, x: &Option<greenfill_sim::Savings>| {
        if let Some(x) = x {
            println!(
                "  greenfill vs {what}: saves {:.2} MWh ({:.1} %) and {:.3} t CO2 ({:.1} %)",
                x.energy_kwh / 1000.0,
                x.energy_pct,
                x.carbon_kg / 1000.0,
                x.carbon_pct
            );
        }
    };
    line("dedicated", &s.saved.vs_dedicated);
    line("asap", &s.saved.vs_asap);
    line("coloc", &s.saved.vs_coloc);
}
