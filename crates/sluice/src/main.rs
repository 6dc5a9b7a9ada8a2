//! The `sluice` command: daemon (`serve`), JSON-RPC client (`rpc`), `perf` and `identify`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "vfio-user NVMe target with SPDK-compatible JSON-RPC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the target daemon (like SPDK's nvmf_tgt).
    Serve(sluice::serve::ServeArgs),
    /// Call a JSON-RPC method (like SPDK's scripts/rpc.py).
    Rpc {
        /// RPC socket of the daemon.
        #[arg(short = 's', long = "server", default_value = sluice::client::DEFAULT_SOCKET)]
        socket: String,
        /// Timeout in seconds for each call.
        #[arg(short = 't', long = "timeout", default_value_t = 60.0)]
        timeout: f64,
        /// Method name, then its rpc.py-style arguments (save_config and load_config too).
        method: String,
        /// Method arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure I/O performance against a vfio-user NVMe controller (like spdk_nvme_perf).
    Perf(sluice_nvme_host::PerfArgs),
    /// Print Identify data of a vfio-user NVMe controller (like spdk_nvme_identify).
    Identify(sluice_nvme_host::IdentifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(args) => match sluice::serve::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice serve: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Rpc {
            socket,
            timeout,
            method,
            args,
        } => {
            if !sluice::client::is_unix_path(&socket) {
                eprintln!("sluice rpc: -s must be a Unix socket path (got '{socket}')");
                return ExitCode::FAILURE;
            }
            let timeout = if timeout.is_finite() && timeout > 0.0 {
                Duration::from_secs_f64(timeout.min(86_400.0))
            } else {
                eprintln!("sluice rpc: invalid timeout");
                return ExitCode::FAILURE;
            };
            let opts = sluice::client::RpcOptions { socket, timeout };
            match sluice::client::run(&opts, &method, &args) {
                Ok(Some(text)) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Ok(None) => ExitCode::SUCCESS,
                Err(e) => {
                    sluice::client::report_error(&e);
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Perf(args) => match sluice_nvme_host::perf_main(args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice perf: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Identify(args) => match sluice_nvme_host::identify_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice identify: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
