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
    /// What-if grid: run the scenario at every combination of --set values, in
    /// parallel; one summary row per point (sweep.csv and sweep.json in --out).
    Sweep(SweepArgs),
    /// Write a scenario for your own fleet: online machines from a usage file
    /// (one per series, e.g. from `data import prometheus`), batch machines
    /// sized to a job trace, a grid zone's carbon; every key commented.
    Init(crate::sim_init::InitArgs),
    /// Replay a scenario through the real greenfill-scheduler (started here, its
    /// own store, on a virtual clock), with one simulated agent per node driven
    /// by the trace, and compare the service's energy, carbon, core-hours and
    /// powered node-hours with the simulator's greenfill run on the same
    /// machines. Writes replay.json; exits 0 when it ran, whatever the diff.
    Replay(crate::replay::ReplayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    #[arg(long)]
    scenario: PathBuf,
    /// KEY=V1,V2,…: a dotted scenario key (`carbon.file`, `safety_margin`,
    /// `batch.deadline_slack`, `cluster.pools.0.pue`; `pue` sets every pool's).
    /// Repeat for more keys.
    #[arg(long = "set", required = true)]
    set: Vec<String>,
    /// Output folder (default: out/<scenario file name>-sweep).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
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
    /// Also say where greenfill's saving against dedicated machines comes from:
    /// runs asap and greenfill again with parts turned off, one step at a time
    /// (co-location by first fit, + forecast placement, + power-down of idle
    /// machines, + carbon timing, + zone placement where pools have zones), and
    /// prints what each step saves. Needs `dedicated` and `greenfill` among the
    /// scenario's policies; three or four more runs.
    #[arg(long)]
    attribution: bool,
    /// Also say how far greenfill and asap are from the best possible: a lower
    /// bound on the carbon of any schedule of the jobs each finished, with
    /// perfect foresight (the actual online use and carbon), from an LP over
    /// hour slots. Its relaxations, each of which only lowers it: jobs run in
    /// fractions, pause and split across a pool's machines; CPU is the only
    /// capacity (no memory, margin or guard); a job's window runs from its
    /// arrival to the later of its deadline and when it finished; batch power at
    /// the least watts per core of the pool's curve and the hour's cleanest
    /// intensity; sleeping machines powered in fractions with no wake energy,
    /// latency, idle wait or minimum off time.
    #[arg(long)]
    gap: bool,
}

/// `out/<scenario file name><suffix>`: where a command writes when not told.
pub(crate) fn default_out(scenario: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = scenario.file_stem().map_or_else(|| "scenario".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from("out").join(format!("{stem}{suffix}"))
}

pub(crate) fn run(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run(a) => run_one(&a),
        SimCommand::Sweep(a) => run_sweep(&a),
        SimCommand::Init(a) => crate::sim_init::init(&a),
        SimCommand::Replay(a) => crate::replay::replay(&a),
    }
}

fn run_sweep(a: &SweepArgs) -> Result<()> {
    let mut sets = Vec::new();
    for s in &a.set {
        let (k, v) = s.split_once('=').with_context(|| format!("--set {s}: expected KEY=V1,V2,…"))?;
        sets.push((k.trim().to_owned(), v.split(',').map(|x| x.trim().to_owned()).collect::<Vec<_>>()));
    }
    let text =
        std::fs::read_to_string(&a.scenario).with_context(|| format!("{}: cannot read", a.scenario.display()))?;
    let base = a.scenario.parent().unwrap_or(std::path::Path::new("."));
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let rows = greenfill_sim::sweep(&a.scenario.display().to_string(), &text, base, &sets, threads)?;
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.scenario, "-sweep"));
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("sweep.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    let mut w = csv::Writer::from_path(out.join("sweep.csv"))?;
    let keys: Vec<String> = sets.iter().map(|(k, _)| k.clone()).collect();
    let policies: Vec<String> = rows.first().map(|r| r.policies.keys().cloned().collect()).unwrap_or_default();
    let fields = [
        "energy_kwh",
        "carbon_kg",
        "cost",
        "mean_cpu_util_powered",
        "mean_cpu_util_powered_with_drain",
        "jobs_late",
        "online_overload_steps",
        "guard_throttled_steps",
    ];
    let mut header = keys.clone();
    for p in &policies {
        header.extend(fields.iter().map(|f| format!("{p}_{f}")));
    }
    header.extend([
        "saved_vs_dedicated_carbon_pct".to_owned(),
        "saved_vs_asap_carbon_pct".to_owned(),
        "saved_vs_coloc_carbon_pct".to_owned(),
    ]);
    w.write_record(&header)?;
    for r in &rows {
        let mut rec: Vec<String> = keys.iter().map(|k| r.point.get(k).cloned().unwrap_or_default()).collect();
        for p in &policies {
            rec.extend(fields.iter().map(|f| r.policies[p].get(f).map_or_else(String::new, |v| format!("{v:.4}"))));
        }
        for s in [&r.saved.vs_dedicated, &r.saved.vs_asap, &r.saved.vs_coloc] {
            rec.push(s.as_ref().map_or_else(String::new, |x| format!("{:.3}", x.carbon_pct)));
        }
        w.write_record(&rec)?;
    }
    w.flush()?;
    let frontier = greenfill_sim::frontier_html(&a.scenario.display().to_string(), &rows);
    if let Some(page) = &frontier {
        std::fs::write(out.join("sweep.html"), page)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            let point: Vec<String> = r.point.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let pct = |s: &Option<greenfill_sim::Savings>| {
                s.as_ref().map_or_else(|| "—".to_owned(), |x| format!("{:+.1} %", x.carbon_pct))
            };
            // With prices, greenfill's carbon and bill: the sweep's trade-off.
            let ours = r.policies.get("greenfill");
            let bill = ours
                .filter(|g| g.get("cost").is_some_and(|c| *c != 0.0))
                .map(|g| format!("; greenfill {:.1} kg CO2, bill {:.1}", g["carbon_kg"], g["cost"]))
                .unwrap_or_default();
            println!(
                "{:<60} carbon saved by greenfill: vs dedicated {}, vs asap {}, vs coloc {}{bill}",
                point.join(" "),
                pct(&r.saved.vs_dedicated),
                pct(&r.saved.vs_asap),
                pct(&r.saved.vs_coloc)
            );
        }
        let html = if frontier.is_some() { ", sweep.html (carbon against cost)" } else { "" };
        println!("wrote {}/sweep.csv and sweep.json{html}", out.display());
    }
    Ok(())
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
    let results = results.inspect_err(|_| bar.finish_and_clear())?;
    let mut summary = summarize(&r, &inputs, &results);
    if a.attribution {
        if let Some(why) = greenfill_sim::why_no_attribution(&results) {
            bar.finish_and_clear();
            anyhow::bail!("--attribution: {why}");
        }
        bar.set_length(1000);
        summary.attribution = greenfill_sim::attribute(&r, &inputs, &results, |step, f| {
            bar.set_message(step.to_owned());
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a share in [0, 1]")]
            bar.set_position((f * 1000.0) as u64);
        })?;
    }
    bar.finish_and_clear();
    if a.gap {
        for (p, res) in results.iter().filter(|(p, _)| matches!(p.name(), "asap" | "greenfill")) {
            let b =
                greenfill_sim::lower_bound(&inputs, res).map_err(|e| anyhow::anyhow!("--gap, {}: {e}", p.name()))?;
            summary.gap.insert(p.name().to_owned(), b);
        }
    }
    let out = a.out.clone().unwrap_or_else(|| default_out(&a.scenario, ""));
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
    // The energy bill, when the scenario has prices, is the last column.
    let bill_head = s.currency.as_ref().map(|c| format!(" {c:>10}")).unwrap_or_default();
    println!(
        "  {:<10} {:>10} {:>10} {:>9} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9} {:>6} {:>8}{bill_head}",
        "policy",
        "MWh",
        "t CO2",
        "util %",
        "+drain %",
        "done",
        "late",
        "unfin",
        "overload",
        "throttled",
        "wakes",
        "run s"
    );
    for (name, p) in &s.policies {
        let bill = s.currency.as_ref().map(|_| format!(" {:>10.0}", p.cost)).unwrap_or_default();
        println!(
            "  {:<10} {:>10.2} {:>10.3} {:>9.1} {:>9.1} {:>6} {:>6} {:>6} {:>9} {:>9} {:>6} {:>8.1}{bill}",
            name,
            p.energy_kwh / 1000.0,
            p.carbon_kg / 1000.0,
            p.mean_cpu_util_powered * 100.0,
            p.mean_cpu_util_powered_with_drain * 100.0,
            p.jobs_completed,
            p.jobs_late,
            p.jobs_unfinished,
            p.online_overload_steps,
            p.guard_throttled_steps,
            p.resumes,
            p.run_ms / 1000.0
        );
    }
    let line = |what: &str, x: &Option<greenfill_sim::Savings>| {
        if let Some(x) = x {
            println!("  greenfill vs {what}: {}", x.in_words);
            if x.embodied_kg != 0.0 {
                println!("    and {:.3} t CO2e of embodied carbon (powered node-hours)", x.embodied_kg / 1000.0);
            }
            if let Some(c) = &s.currency {
                let (verb, amount) = if x.cost >= 0.0 { ("saves", x.cost) } else { ("adds", -x.cost) };
                println!("    and {verb} {amount:.0} {c} ({:.1} %) of the energy bill", x.cost_pct.abs());
            }
        }
    };
    line("dedicated", &s.saved.vs_dedicated);
    line("asap", &s.saved.vs_asap);
    line("coloc", &s.saved.vs_coloc);
    for (what, why) in &s.saved.not_compared {
        println!("  greenfill vs {what}: no comparison: {why}");
    }
    let unfinished: Vec<String> = s
        .policies
        .iter()
        .filter(|(_, p)| p.jobs_unfinished > 0)
        .map(|(name, p)| format!("{name} {}", p.jobs_unfinished))
        .collect();
    if !unfinished.is_empty() {
        println!(
            "  note: jobs unfinished at the end ({}): ones the policy never started (too large for its placement \
             rule) or that need a longer `drain` in the scenario",
            unfinished.join(", ")
        );
    }
    if let Some(a) = &s.attribution {
        print_attribution(a, s.currency.as_deref());
    }
    for (policy, b) in s.gap.iter().rev() {
        println!(
            "  {policy} is within {:.1} % of the best possible ({:.1} kg CO2, a lower bound with perfect foresight; \
             its batch's own carbon is {:.2}x the bound's)",
            b.gap_pct, b.carbon_kg, b.batch_ratio
        );
    }
}

/// The attribution table; with prices, the bill each step saves is a last column.
fn print_attribution(a: &greenfill_sim::Attribution, currency: Option<&str>) {
    println!("  where the saving against dedicated comes from (each step a run of its own):");
    let head = currency.map(|c| format!(" {:>12}", format!("{c} saved"))).unwrap_or_default();
    println!(
        "    {:<32} {:>11} {:>10} {:>14} {:>10}{head}",
        "step", "kWh saved", "% energy", "kg CO2 saved", "% carbon"
    );
    let bill = |x: f64| currency.map(|_| format!(" {x:>12.1}")).unwrap_or_default();
    for s in &a.steps {
        println!(
            "    {:<32} {:>11.1} {:>10.1} {:>14.1} {:>10.1}{}{}",
            s.step,
            s.saved_kwh,
            s.share_of_energy_pct,
            s.saved_kg,
            s.share_of_carbon_pct,
            bill(s.saved_cost),
            if s.like_work { "" } else { "  (not like work: batch core-hours more than 2 % from dedicated's)" }
        );
    }
    println!(
        "    {:<32} {:>11.1} {:>10.1} {:>14.1} {:>10.1}{}",
        "total",
        a.total_saved_kwh,
        100.0,
        a.total_saved_kg,
        100.0,
        bill(a.total_saved_cost)
    );
}
