//! `greenfill`: the command users run.
//!
//! Every subcommand that prints data takes `--json` for scripts; errors go to
//! stderr with the file, line and field that caused them, and exit with code 1
//! (2 for usage errors, from clap).

mod carbon;
mod client;
mod data;
mod forecast;
mod plan;
mod price;
mod prometheus;
mod replay;
mod sim;
mod sim_init;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "greenfill", version, about = "Co-locate batch work into online fleets' valleys, timed by carbon", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live grid carbon signals: what a source (NESO, Energy-Charts, Electricity
    /// Maps, WattTime, a file, a constant) gives, or why it does not.
    #[command(subcommand)]
    Carbon(carbon::CarbonCommand),
    /// Day-ahead electricity prices: what a source (Energy-Charts, ENTSO-E, a
    /// file, a constant) gives per MWh, or why it does not.
    #[command(subcommand)]
    Price(price::PriceCommand),
    /// Read trace files (carbon intensity, machine usage, job arrivals) and summarise them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Forecast online usage with trustworthy upper bounds; backtest the models.
    #[command(subcommand)]
    Forecast(forecast::ForecastCommand),
    /// What-if simulations: kWh and CO2 of co-location and carbon-aware timing.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Plan batch jobs onto a cluster from files (--cluster, --jobs): where and when
    /// each runs, how many nodes stay powered, energy and carbon. Without --cluster:
    /// show the scheduler's current plan.
    Plan(plan::PlanArgs),
    /// Submit a batch job to the scheduler; prints its id.
    Submit(Box<client::SubmitArgs>),
    /// List jobs (table, or --json).
    Jobs(client::JobsArgs),
    /// One job, whole.
    Job {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Cancel a job (a running one is stopped on its node).
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Follow job state changes as they happen.
    Watch {
        /// Only these jobs (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Replay changes after this revision first.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Why a job is where it is: planned start, the constraint holding it, carbon.
    Explain {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// Nodes the scheduler knows, with their latest telemetry.
    Nodes {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: client::Conn,
    },
    /// The audit log: agent registrations (accepted or refused, and why) and
    /// cancels (who and why), oldest first. Admins and viewers only.
    Audit(client::AuditArgs),
    /// Finished jobs' energy and carbon summed per pool, user, zone and day
    /// (UTC), from the store: a scheduler restart does not reset it. Admins and
    /// viewers only.
    Ledger(client::LedgerArgs),
    /// Shell completions for bash, zsh or fish, on stdout, e.g.
    /// `greenfill completions bash > /etc/bash_completion.d/greenfill`.
    Completions { shell: Shell },
    /// The manual page (roff) on stdout; with --out DIR, one page per command
    /// (greenfill.1, greenfill-sim-run.1, ...) for `man -l` or a MANPATH.
    Man {
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// The shells `greenfill completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Carbon(cmd) => carbon::run(cmd),
        Command::Price(cmd) => price::run(cmd),
        Command::Plan(args) => match args.live() {
            Some((jobs, json)) => client::live_plan(&args.conn, jobs, json),
            None => plan::run(&args),
        },
        Command::Submit(args) => client::submit(&args.conn, &args),
        Command::Jobs(args) => match &args.command {
            Some(client::JobsCommand::Export(e)) => client::export(&args.conn, e),
            None => client::jobs(&args.conn, &args),
        },
        Command::Job { id, json, conn } => client::job(&conn, &id, json),
        Command::Cancel { id, reason, conn } => client::cancel(&conn, &id, &reason),
        Command::Watch { ids, since, json, conn } => client::watch(&conn, ids, since, json),
        Command::Explain { id, json, conn } => client::explain(&conn, &id, json),
        Command::Nodes { json, conn } => client::nodes(&conn, json),
        Command::Audit(args) => client::audit(&args.conn, &args),
        Command::Ledger(args) => client::ledger(&args.conn, &args),
        Command::Forecast(cmd) => forecast::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
        Command::Completions { shell } => {
            completions(shell);
            Ok(())
        }
        Command::Man { out } => man(out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            // Bad input to an import: as clap's usage errors.
            if e.downcast_ref::<prometheus::ImportError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

fn completions(shell: Shell) {
    use clap_complete::{Shell as S, generate};
    let shell = match shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
    };
    generate(shell, &mut <Cli as clap::CommandFactory>::command(), "greenfill", &mut std::io::stdout());
}

fn man(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let cmd = <Cli as clap::CommandFactory>::command();
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("--out {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir).with_context(|| format!("--out {}", dir.display()))?;
            eprintln!("wrote the manual pages to {}", dir.display());
            Ok(())
        }
        None => Ok(clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?),
    }
}

/// The error and its causes, each cause added only if the text so far does not
/// already hold it (many of our errors name their source in their own message).
fn report(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}
