//! Connects to a vfio-user NVMe controller like a booted, idle VM would (controller enabled,
//! one I/O queue pair created, AER outstanding) and then does nothing for N seconds.
//! Used by `bench/poll_modes.sh` to measure the daemon's idle CPU.
//!
//! `idle_client <socket> [seconds]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_nvme_host::{Controller, ControllerOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(sock) = args.next().map(PathBuf::from) else {
        eprintln!("usage: idle_client <socket> [seconds]");
        return ExitCode::FAILURE;
    };
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(35);
    let opts = ControllerOptions {
        dma_size: 8 << 20,
        ..ControllerOptions::default()
    };
    let run = || -> Result<(), sluice_nvme_host::Error> {
        let mut c = Controller::connect(&sock, opts)?;
        c.set_num_queues(1, 1)?;
        let _qp = c.create_io_queue_pair(1, 32, None)?;
        c.submit_aer()?;
        eprintln!("idle_client: connected, idling {secs} s");
        std::thread::sleep(Duration::from_secs(secs));
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_client: {e}");
            ExitCode::FAILURE
        }
    }
}
