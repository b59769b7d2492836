//! `/metrics` for both daemons: the `metrics` facade's Prometheus recorder,
//! every series described (`# HELP`, which `promtool check metrics` wants),
//! and text the caller adds: counters in fractions of a base unit (grams,
//! joules), which the facade's integer counters cannot hold.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What kind of series a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A series this daemon exports, and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

/// More exposition text, rendered at each scrape.
pub type Extra = Arc<dyn Fn() -> String + Send + Sync>;

/// Install the recorder, describe `series`, and serve `GET /metrics` on `addr`
/// until the process ends. Call inside the daemon's runtime; fails when the
/// address cannot be bound.
pub async fn serve(addr: SocketAddr, series: &[Described], extra: Option<Extra>) -> std::io::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    for s in series {
        match s.kind {
            Kind::Counter => metrics::describe_counter!(s.name, s.help),
            Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
            Kind::Histogram => metrics::describe_histogram!(s.name, s.help),
        }
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, extra) = (handle.clone(), extra.clone());
            async move {
                let mut text = handle.render();
                if let Some(extra) = extra {
                    text.push_str(&extra());
                }
                ([("content-type", "text/plain; version=0.0.4")], text)
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the /metrics server stopped");
        }
    });
    Ok(())
}

/// A counter's exposition text: `# HELP`, `# TYPE` and one sample per label set.
pub fn counter_text(name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) -> String {
    use std::fmt::Write;
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} counter\n");
    for (labels, v) in samples {
        let labels: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
    }
    out
}
