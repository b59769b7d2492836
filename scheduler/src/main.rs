//! `greenfill-scheduler`: the cluster's scheduler service.

use clap::Parser;
use greenfill_runtime::Failure;
use greenfill_scheduler::service::{self, Config};
use std::path::PathBuf;

/// greenfill's scheduler: takes batch jobs over gRPC, plans them onto the online
/// fleet's spare capacity at the least energy and carbon, and dispatches them to
/// node agents.
///
/// Quick start on one machine: `greenfill-scheduler --insecure-local`, then (as
/// root) `greenfill-agent run --state-dir /tmp/gf-agent` and
/// `greenfill submit -- echo hi`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML); every key has a default. examples/scheduler.toml lists them all.
    #[arg(long, env = "GREENFILL_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database lives (overrides the config; default ~/.local/share/greenfill).
    #[arg(long, env = "GREENFILL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC address (overrides the config; default 127.0.0.1:7070).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Prometheus /metrics address, e.g. 127.0.0.1:9470.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// No tokens, no TLS: only on a loopback address, for trying greenfill out.
    #[arg(long)]
    insecure_local: bool,
    /// Planning interval, e.g. 60s (overrides the config).
    #[arg(long)]
    plan_interval: Option<String>,
    /// User bearer tokens, comma-separated (added to the config's).
    #[arg(long, env = "GREENFILL_USER_TOKENS", value_delimiter = ',', hide_env_values = true)]
    user_tokens: Vec<String>,
    /// Agent bearer tokens, comma-separated (added to the config's).
    #[arg(long, env = "GREENFILL_AGENT_TOKENS", value_delimiter = ',', hide_env_values = true)]
    agent_tokens: Vec<String>,
    /// The store: a postgres:// URL for replicas sharing PostgreSQL (one leads);
    /// unset = SQLite in the data dir. From a secret: `GREENFILL_STORE`.
    #[arg(long, env = "GREENFILL_STORE", hide_env_values = true)]
    store: Option<String>,
    /// The address clients and agents reach this replica at when it leads
    /// (e.g. the pod's DNS name and port; default: --listen).
    #[arg(long, env = "GREENFILL_ADVERTISE")]
    advertise: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Run on a virtual clock starting at this time (RFC 3339 or unix seconds),
    /// moved only by ClockService.Advance, which also runs the planning rounds:
    /// what `greenfill sim replay` starts. Never in a deployment.
    #[arg(long, value_name = "TIME")]
    virtual_clock: Option<String>,
}

fn main() {
    let args = Args::parse();
    greenfill_runtime::init_logging(args.log_json);
    // The one exit site: 1 when it could not start (config, port, data dir), 70
    // when it stopped itself while serving (a failed commit): restart it.
    if let Err(failed) = run(args) {
        greenfill_runtime::exit(failed);
    }
}

fn run(args: Args) -> Result<(), Failure<anyhow::Error>> {
    let (config, rt) = configure(args).map_err(Failure::Start)?;
    rt.block_on(async move {
        if let Some(addr) = config.metrics_listen {
            let ledger: greenfill_runtime::metrics::Extra = std::sync::Arc::new(service::ledger::render);
            greenfill_runtime::metrics::serve(addr, service::METRICS, Some(ledger))
                .await
                .map_err(|e| Failure::Start(anyhow::anyhow!("metrics_listen {addr}: {e}")))?;
        }
        // SIGTERM stops a follower too (while it waits for the lease).
        let stop = greenfill_runtime::CancellationToken::new();
        greenfill_runtime::cancel_on_signal(stop.clone()).map_err(|e| Failure::Start(e.into()))?;
        let running = match service::start_with(config, stop.clone()).await {
            Ok(r) => r,
            Err(_) if stop.is_cancelled() => {
                tracing::info!("stopped while following");
                return Ok(());
            }
            Err(e) => return Err(Failure::Start(e)),
        };
        running.stopped().await.map_err(Failure::Serving)
    })
}

/// The config from the file, the flags and the environment, validated; and the runtime.
fn configure(args: Args) -> anyhow::Result<(Config, tokio::runtime::Runtime)> {
    if let Some(t) = &args.virtual_clock {
        let start = greenfill_core::time::parse_timestamp(t)
            .ok_or_else(|| anyhow::anyhow!("--virtual-clock {t}: not a time (RFC 3339, e.g. 2022-06-01T00:00:00Z)"))?;
        greenfill_runtime::clock::use_virtual(start).map_err(anyhow::Error::msg)?;
    }
    let mut config = match &args.config {
        Some(p) => Config::read(p)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(i) = &args.plan_interval {
        let secs = greenfill_core::time::parse_duration(i)
            .ok_or_else(|| anyhow::anyhow!("--plan-interval {i}: not a duration (e.g. 60s, 5m)"))?;
        config.planning.interval = std::time::Duration::from_secs_f64(secs);
    }
    if let Some(s) = args.store.filter(|s| !s.is_empty()) {
        config.store = Some(s);
    }
    if let Some(a) = args.advertise {
        config.replication.advertise = Some(a);
    }
    config.insecure_local |= args.insecure_local;
    config.user_tokens.extend(args.user_tokens.into_iter().filter(|t| !t.is_empty()));
    config.agent_tokens.extend(args.agent_tokens.into_iter().filter(|t| !t.is_empty()));
    config.validate(&args.config.as_ref().map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string()))?;
    Ok((config, tokio::runtime::Runtime::new()?))
}
