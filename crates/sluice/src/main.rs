//! The `sluice` command: daemon (`serve`), JSON-RPC client (`rpc`), `perf` and `identify`.

fn main() {
    println!("sluice: not yet implemented");
}
