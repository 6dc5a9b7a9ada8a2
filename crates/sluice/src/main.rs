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
    /// Call a JSON-RPC method (like SPDK's scripts/rpc.py):
    /// `sluice rpc [-s SOCKET] [-t TIMEOUT] METHOD ARGS...` (also save_config, load_config).
    Rpc {
        /// [-s SOCKET] [-t TIMEOUT_SECONDS] METHOD [ARGS...]
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 1..)]
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
        Cmd::Rpc { args } => rpc_main(&args),
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

/// `sluice rpc`: global options before the method (like rpc.py), the rest is the method's.
fn rpc_main(args: &[String]) -> ExitCode {
    let mut socket = sluice::client::DEFAULT_SOCKET.to_owned();
    let mut timeout = 60.0f64;
    let mut port: Option<String> = None;
    let mut i = 0usize;
    let usage = "usage: sluice rpc [-s SOCKET] [-t TIMEOUT] METHOD [ARGS...]";
    while let Some(a) = args.get(i) {
        match a.as_str() {
            "-s" | "--server" => {
                let Some(v) = args.get(i + 1) else {
                    eprintln!("{usage}");
                    return ExitCode::FAILURE;
                };
                socket = v.clone();
                i += 2;
            }
            // rpc.py's TCP port (used with `-s <ip address>`): accepted so that the
            // error below names the real problem instead of taking `-p` as the method.
            "-p" | "--port" => {
                let Some(v) = args.get(i + 1) else {
                    eprintln!("sluice rpc: -p expects a port number\n{usage}");
                    return ExitCode::FAILURE;
                };
                port = Some(v.clone());
                i += 2;
            }
            "-t" | "--timeout" => {
                let Some(v) = args.get(i + 1).and_then(|v| v.parse::<f64>().ok()) else {
                    eprintln!("sluice rpc: -t expects a number of seconds\n{usage}");
                    return ExitCode::FAILURE;
                };
                timeout = v;
                i += 2;
            }
            "-h" | "--help" => {
                println!(
                    "{usage}\nmethods: {}",
                    sluice::client::known_methods().join(", ")
                );
                return ExitCode::SUCCESS;
            }
            _ => break,
        }
    }
    let Some(method) = args.get(i) else {
        eprintln!("{usage}");
        return ExitCode::FAILURE;
    };
    let rest = args.get(i + 1..).unwrap_or(&[]);
    if !sluice::client::is_unix_path(&socket) {
        let addr = port.map_or_else(|| socket.clone(), |p| format!("{socket} port {p}"));
        eprintln!(
            "sluice rpc: -s {addr}: TCP JSON-RPC is not supported: Unix socket path expected \
             (sluice serve -r PATH; e.g. -s /var/tmp/sluice.sock)"
        );
        return ExitCode::FAILURE;
    }
    if !(timeout.is_finite() && timeout > 0.0) {
        eprintln!("sluice rpc: invalid timeout");
        return ExitCode::FAILURE;
    }
    let opts = sluice::client::RpcOptions {
        socket,
        timeout: Duration::from_secs_f64(timeout.min(86_400.0)),
    };
    match sluice::client::run(&opts, method, rest) {
        Ok(Some(text)) => {
            // A closed stdout (`| head`) is not an error of the call.
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            sluice::client::report_error(&e);
            ExitCode::FAILURE
        }
    }
}
