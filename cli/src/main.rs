//! `greenfill`: the command users run.
//!
//! Every subcommand that prints data takes `--json` for scripts; errors go to
//! stderr with the file, line and field that caused them, and exit with code 1
//! (2 for usage errors, from clap).

mod data;
mod forecast;
mod plan;
mod sim;

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
    /// Read trace files (carbon intensity, machine usage, job arrivals) and summarise them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Forecast online usage with trustworthy upper bounds; backtest the models.
    #[command(subcommand)]
    Forecast(forecast::ForecastCommand),
    /// What-if simulations: kWh and CO2 of co-location and carbon-aware timing.
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Plan batch jobs onto a cluster from files: where and when each runs, how many
    /// nodes stay powered, energy and carbon.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data(cmd) => data::run(cmd),
        Command::Plan(args) => plan::run(&args),
        Command::Forecast(cmd) => forecast::run(cmd),
        Command::Sim(cmd) => sim::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
