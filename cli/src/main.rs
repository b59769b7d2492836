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
mod prometheus;
mod replay;
mod sim;
mod sim_init;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "greenfill", version, about = "Co-locate batch work into online fleets' valleys, timed by carbon", long_about = None)]
struct Cli {
    #[command(flatten)]
    conn: client::Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live grid carbon signals: what a source (NESO, Energy-Charts, Electricity
    /// Maps, WattTime, a file, a constant) gives, or why it does not.
    #[command(subcommand)]
    Carbon(carbon::CarbonCommand),
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
    Submit(client::SubmitArgs),
    /// List jobs (table, or --json).
    Jobs(client::JobsArgs),
    /// One job, whole.
    Job {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (a running one is stopped on its node).
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
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
    },
    /// Why a job is where it is: planned start, the constraint holding it, carbon.
    Explain {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Nodes the scheduler knows, with their latest telemetry.
    Nodes {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Carbon(cmd) => carbon::run(cmd),
        Command::Plan(args) => match args.live() {
            Some((jobs, json)) => client::live_plan(&cli.conn, jobs, json),
            None => plan::run(&args),
        },
        Command::Submit(args) => client::submit(&cli.conn, &args),
        Command::Jobs(args) => match &args.command {
            Some(client::JobsCommand::Export(e)) => client::export(&cli.conn, e),
            None => client::jobs(&cli.conn, &args),
        },
        Command::Job { id, json } => client::job(&cli.conn, &id, json),
        Command::Cancel { id, reason } => client::cancel(&cli.conn, &id, &reason),
        Command::Watch { ids, since, json } => client::watch(&cli.conn, ids, since, json),
        Command::Explain { id, json } => client::explain(&cli.conn, &id, json),
        Command::Nodes { json } => client::nodes(&cli.conn, json),
        Command::Forecast(cmd) => forecast::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
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
