//! Fit + 24 h forecast for many synthetic series of 7 days at 5 min, on all cores.
//!
//! `cargo run --release -p greenfill-benches --bin forecast-speed -- --series 10000 [--model NAME]`

use clap::Parser;
use greenfill_forecast::{by_name, models};
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    #[arg(long, default_value_t = 7)]
    days: usize,
    /// Any model `greenfill forecast backtest` knows.
    #[arg(long, default_value = "greenfill")]
    model: String,
    #[arg(long)]
    json: bool,
}

/// A deterministic daily cycle with a per-series phase, level and noise.
fn series(i: usize, n: usize) -> Vec<f64> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let phase = (i % 288) as f64;
    (0..n)
        .map(|t| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x % 1000) as f64 / 100.0;
            30.0 + 20.0 * ((t as f64 + phase) / 288.0 * std::f64::consts::TAU).sin() + noise
        })
        .collect()
}

fn main() {
    let a = Args::parse();
    let n = a.days * 288;
    let data: Vec<Vec<f64>> = (0..a.series).map(|i| series(i, n)).collect();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let Some(model) = by_name(&a.model) else {
        let known: Vec<&str> = models().iter().map(|m| m.name()).collect();
        eprintln!("--model {}: unknown (known: {})", a.model, known.join(", "));
        std::process::exit(2);
    };
    let model = model.as_ref();
    let t = Instant::now();
    let chunk = a.series.div_ceil(threads).max(1);
    let bounds: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(chunk)
            .map(|c| {
                s.spawn(|| c.iter().map(|h| model.forecast(h, 288, 288, 0.95).map_or(0.0, |f| f.upper[0])).sum::<f64>())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{{\"model\": \"{}\", \"series\": {}, \"days\": {}, \"threads\": {threads}, \"seconds\": {secs:.3}, \"series_per_s\": {:.0}, \"checksum\": {bounds:.3}, \"peak_rss_mb\": {:.1}}}",
            a.model,
            a.series,
            a.days,
            a.series as f64 / secs,
            greenfill_benches::peak_rss_mb().unwrap_or(f64::NAN)
        );
    } else {
        println!(
            "{}: {} series × {} days at 5 min, fit + 24 h forecast on {threads} threads: {secs:.2} s ({:.0} series/s)",
            a.model,
            a.series,
            a.days,
            a.series as f64 / secs
        );
    }
}
