//! Machine-limit probe: round trips per second through shared-memory rings (64-byte
//! submissions, 16-byte completions) at the given depths. Prints one JSON object per depth.
//!
//! `cargo run --release -p sluice-nvme-host --example ring_probe -- --depth 1 --depth 32 -t 2`

use std::time::Duration;

use clap::Parser;
use sluice_nvme_host::probe::ring_probe;

#[derive(Parser)]
struct Args {
    /// Entries in flight (repeatable).
    #[arg(long = "depth", default_values_t = [1usize, 32])]
    depth: Vec<usize>,
    /// Seconds per depth.
    #[arg(short = 't', long = "time", default_value_t = 2.0)]
    time: f64,
    /// Host and target cores, e.g. 0,1 (default: not pinned).
    #[arg(long)]
    cores: Option<String>,
}

fn main() {
    let a = Args::parse();
    let cores = a.cores.as_deref().and_then(|s| {
        let (h, t) = s.split_once(',')?;
        Some((h.trim().parse().ok()?, t.trim().parse().ok()?))
    });
    for d in a.depth {
        let r = ring_probe(d, Duration::from_secs_f64(a.time.max(0.01)), cores);
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    }
}
