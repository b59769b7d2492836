//! What `greenfill-scheduler` and `greenfill-agent` share as processes: one way to
//! stop and one way to log.
//!
//! - [`cancel_on_signal`]: SIGTERM (what Kubernetes sends a pod to stop it) and
//!   SIGINT cancel the daemon's [`CancellationToken`]; every long-lived task stops
//!   on it, and `main` waits for them within a grace period.
//! - [`exit`]: the one exit site of a daemon that failed, with the code that says
//!   how ([`Failure`]).
//! - [`init_logging`]: `RUST_LOG`-style filtering (default `info`), to stderr;
//!   colour only when stderr is a terminal (journald and `kubectl logs` get plain
//!   text); JSON lines when asked.
//! - [`metrics::serve`]: `/metrics`, every series described.

pub mod clock;
pub mod metrics;

use std::io::IsTerminal;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// The exit code of a daemon that stopped because it could not keep a promise
/// (a commit failed, its state file could not be written): EX_SOFTWARE. The
/// supervisor restarts it, and it comes back from what is on disk.
pub const EXIT_FATAL: i32 = 70;

/// Set up tracing for a daemon. Call once, first thing in `main`.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Why a daemon ended with an error, which sets its exit code.
#[derive(Debug)]
pub enum Failure<E> {
    /// It could not start (config, flags, port, data dir): exit 1.
    Start(E),
    /// It stopped itself while serving, because it could not keep a promise (a
    /// failed commit, state that could not be saved): exit [`EXIT_FATAL`].
    Serving(E),
}

/// Log the failure (`{:#}`, with its causes) and exit with its code.
pub fn exit<E: std::fmt::Display>(failure: Failure<E>) -> ! {
    let (code, e) = match failure {
        Failure::Start(e) => (1, e),
        Failure::Serving(e) => (EXIT_FATAL, e),
    };
    tracing::error!("{e:#}");
    std::process::exit(code)
}

/// Cancel `token` at the first SIGTERM or SIGINT. Must be called inside a tokio
/// runtime. A second signal while draining ends the process at once.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal while shutting down: exiting now");
        std::process::exit(130);
    });
    Ok(())
}

/// Wait for every task of `tasks` to end (call `tasks.close()` first), at most
/// `grace`; warn when the drain overruns. Returns whether it finished in time.
pub async fn drain(tasks: &TaskTracker, grace: Duration) -> bool {
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_ok() {
        true
    } else {
        tracing::warn!(grace_s = grace.as_secs_f64(), left = tasks.len(), "shutdown drain overran its grace period");
        false
    }
}
