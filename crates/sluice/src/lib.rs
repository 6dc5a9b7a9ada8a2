//! The Sluice daemon and tools as a library: the JSON-RPC server and client, the target's
//! registries, configuration, and the `serve` main loop. The `sluice` binary is a thin CLI
//! over this crate.

pub mod bdevs;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod jsonrpc;
pub mod nvme_plane;
pub mod nvmf;
pub mod params;
pub mod serve;
pub mod server;
pub mod target;

/// Monotonic nanoseconds since the first call (the `ticks` of stats, `tick_rate` 1 GHz).
pub fn ticks() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
