//! The daemon's RPC surface: framework state (startup / runtime), the method table, config
//! (`framework_get_subsystems` / `framework_get_config`) and applying a config file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::jsonrpc::{Dispatch, RpcError, INVALID_STATE};
use crate::params::decode;
use crate::target::Target;

/// Methods callable before `framework_start_init` (SPDK_RPC_STARTUP). All are also
/// callable at runtime except `framework_start_init`.
const STARTUP_METHODS: &[&str] = &[
    "rpc_get_methods",
    "spdk_get_version",
    "framework_start_init",
    "framework_wait_init",
    "framework_get_subsystems",
    "framework_get_config",
    "spdk_kill_instance",
];

/// Every method, in `rpc_get_methods` order.
pub const METHODS: &[&str] = &[
    "bdev_null_create",
    "bdev_null_delete",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "bdev_aio_create",
    "bdev_aio_delete",
    "bdev_uring_create",
    "bdev_uring_delete",
    "bdev_nbd_client_create",
    "bdev_nbd_client_delete",
    "bdev_get_bdevs",
    "bdev_get_iostat",
    "bdev_set_qos_limit",
    "bdev_wait_for_examine",
    "nvmf_create_transport",
    "nvmf_get_transports",
    "nvmf_create_subsystem",
    "nvmf_delete_subsystem",
    "nvmf_get_subsystems",
    "nvmf_subsystem_add_ns",
    "nvmf_subsystem_remove_ns",
    "nvmf_subsystem_add_listener",
    "nvmf_subsystem_remove_listener",
    "nvmf_subsystem_get_controllers",
    "nvmf_get_stats",
    "framework_get_config",
    "framework_get_subsystems",
    "framework_start_init",
    "framework_wait_init",
    "spdk_kill_instance",
    "spdk_get_version",
    "rpc_get_methods",
];

/// Config subsystems, in dependency order.
const SUBSYSTEMS: &[(&str, &[&str])] = &[("bdev", &[]), ("nvmf", &["bdev"])];

/// Called with the signal number `spdk_kill_instance` asked for, once its response has
/// been written (see [`Dispatch::responded`]).
pub type KillHook = Box<dyn Fn(i32) + Send + Sync>;

thread_local! {
    /// A signal requested by `spdk_kill_instance` on this (connection) thread, delivered
    /// after the response is written: no fixed delay that a loaded machine can outlast.
    static PENDING_KILL: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

/// The daemon: registries behind a mutex, plus the framework state.
pub struct Daemon {
    target: Mutex<Target>,
    initialized: Mutex<bool>,
    init_cv: Condvar,
    kill: KillHook,
    /// Set by SIGTERM/SIGINT: a configuration being applied stops at the next entry.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    current: Option<bool>,
    include_aliases: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    with_batches: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kill {
    sig_name: String,
}

/// Parse a signal name as SPDK's `spdk_kill_instance` does.
pub fn signal_number(name: &str) -> Option<i32> {
    match name {
        "SIGINT" | "INT" | "2" => Some(libc::SIGINT),
        "SIGTERM" | "TERM" | "15" => Some(libc::SIGTERM),
        "SIGQUIT" | "QUIT" | "3" => Some(libc::SIGQUIT),
        "SIGKILL" | "KILL" | "9" => Some(libc::SIGKILL),
        "SIGUSR1" | "USR1" | "10" => Some(libc::SIGUSR1),
        _ => None,
    }
}

impl Daemon {
    /// New daemon; `initialized` false means `--wait-for-rpc` (startup state).
    pub fn new(target: Target, initialized: bool, kill: KillHook) -> Self {
        Self {
            target: Mutex::new(target),
            initialized: Mutex::new(initialized),
            init_cv: Condvar::new(),
            kill,
            stopping: AtomicBool::new(false),
        }
    }

    /// A shutdown was requested: [`Daemon::apply_config`] applies no further entry.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether [`Daemon::request_stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Lock the registries (a poisoned lock is recovered: state is only mutated last).
    pub fn target(&self) -> MutexGuard<'_, Target> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_initialized(&self) -> bool {
        *self.initialized.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Move to the runtime state.
    pub fn start_init(&self) {
        let mut g = self.initialized.lock().unwrap_or_else(|e| e.into_inner());
        *g = true;
        self.init_cv.notify_all();
    }

    fn allowed_now(&self, method: &str) -> bool {
        let startup_ok = STARTUP_METHODS.contains(&method);
        if self.is_initialized() {
            method != "framework_start_init"
        } else {
            startup_ok
        }
    }

    fn config(&self, name: &str) -> Result<Value, RpcError> {
        let t = self.target();
        match name {
            "bdev" => Ok(t.bdev_config()),
            "nvmf" => Ok(t.nvmf_config()),
            other => Err(RpcError::invalid_params(format!(
                "name: subsystem '{other}' not found"
            ))),
        }
    }

    /// Apply a config file value (`{"subsystems":[...]}`) like rpc.py's `load_config`:
    /// passes over the entries callable in the current state, then `framework_start_init`.
    pub fn apply_config(&self, config: &Value) -> Result<(), RpcError> {
        let mut pending = parse_config(config)?;
        for (method, _) in &pending {
            if !METHODS.contains(&method.as_str()) {
                return Err(RpcError::invalid_params(format!(
                    "config: unknown method '{method}'"
                )));
            }
        }
        loop {
            let mut progressed = false;
            let mut rest = Vec::new();
            for (method, params) in pending {
                if self.stopping() {
                    return Err(RpcError::new(
                        crate::jsonrpc::INTERNAL_ERROR,
                        format!("config: interrupted by shutdown before {method}"),
                    ));
                }
                if self.allowed_now(&method) {
                    let result = self.call(&method, params.as_ref());
                    // There is no response to write: a requested signal goes now.
                    self.responded();
                    result.map_err(|e| {
                        RpcError::new(e.code, format!("config: {method}: {}", e.message))
                    })?;
                    progressed = true;
                } else {
                    rest.push((method, params));
                }
            }
            pending = rest;
            if !self.is_initialized() {
                self.start_init();
                progressed = true;
            }
            if pending.is_empty() || !progressed {
                break;
            }
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(RpcError::invalid_params(
                "config: some entries could not be applied in any framework state",
            ))
        }
    }
}

/// Flatten a config file into (method, params) in order (batch arrays allowed).
pub fn parse_config(config: &Value) -> Result<Vec<(String, Option<Value>)>, RpcError> {
    let bad = |m: &str| RpcError::invalid_params(format!("config: {m}"));
    let subsystems = config
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing 'subsystems' array"))?;
    let mut out = Vec::new();
    for s in subsystems {
        let entries = match s.get("config") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(bad("'config' must be an array")),
        };
        for e in entries {
            let items = match e {
                Value::Array(batch) => batch,
                other => vec![other],
            };
            for item in items {
                let method = item
                    .get("method")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("entry without 'method'"))?;
                out.push((method.to_owned(), item.get("params").cloned()));
            }
        }
    }
    Ok(out)
}

impl Dispatch for Daemon {
    fn call(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        let result = self.dispatch(method, params);
        match &result {
            Ok(_) => tracing::debug!(method, "rpc ok"),
            // Client-triggered: debug level, never a flood at the default level.
            Err(e) => tracing::debug!(method, code = e.code, message = %e.message, "rpc error"),
        }
        result
    }

    fn responded(&self) {
        if let Some(sig) = PENDING_KILL.with(std::cell::Cell::take) {
            (self.kill)(sig);
        }
    }
}

impl Daemon {
    fn dispatch(&self, method: &str, params: Option<&Value>) -> Result<Value, RpcError> {
        if !METHODS.contains(&method) {
            return Err(RpcError::method_not_found(method));
        }
        if !self.allowed_now(method) {
            let msg = if self.is_initialized() {
                "Method may only be called before framework is initialized using framework_start_init RPC."
            } else {
                "Method may only be called after framework is initialized using framework_start_init RPC."
            };
            return Err(RpcError::new(INVALID_STATE, msg));
        }
        match method {
            "spdk_get_version" => {
                crate::params::none(method, params)?;
                Ok(version_json())
            }
            "rpc_get_methods" => {
                let p: GetMethods = decode(params)?;
                let _ = p.include_aliases;
                let list: Vec<&str> = METHODS
                    .iter()
                    .copied()
                    .filter(|m| !p.current.unwrap_or(false) || self.allowed_now(m))
                    .collect();
                Ok(json!(list))
            }
            "framework_start_init" => {
                crate::params::none(method, params)?;
                self.start_init();
                Ok(json!(true))
            }
            "framework_wait_init" => {
                crate::params::none(method, params)?;
                let mut g = self.initialized.lock().unwrap_or_else(|e| e.into_inner());
                while !*g {
                    g = self.init_cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                Ok(json!(true))
            }
            "framework_get_subsystems" => {
                crate::params::none(method, params)?;
                Ok(Value::Array(
                    SUBSYSTEMS
                        .iter()
                        .map(|(n, deps)| json!({"subsystem": n, "depends_on": deps}))
                        .collect(),
                ))
            }
            "framework_get_config" => {
                let p: GetConfig = decode(params)?;
                let _ = p.with_batches;
                self.config(&p.name)
            }
            "spdk_kill_instance" => {
                let p: Kill = decode(params)?;
                let sig = signal_number(&p.sig_name).ok_or_else(|| {
                    RpcError::invalid_params(format!("sig_name: unknown signal '{}'", p.sig_name))
                })?;
                PENDING_KILL.with(|p| p.set(Some(sig)));
                Ok(json!(true))
            }
            _ => self
                .target()
                .call(method, params)
                .unwrap_or_else(|| Err(RpcError::method_not_found(method))),
        }
    }
}

/// `spdk_get_version` result.
pub fn version_json() -> Value {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    json!({"version": format!("Sluice v{v}"),
           "fields": {"major": major, "minor": minor, "patch": patch, "suffix": ""}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::SocketDataPlane;

    fn daemon(init: bool) -> Daemon {
        Daemon::new(
            Target::new(Box::new(SocketDataPlane::new(vec![0]))),
            init,
            Box::new(|_| {}),
        )
    }

    #[test]
    fn startup_state_gates_methods() {
        let d = daemon(false);
        let e = d.call("bdev_get_bdevs", None).unwrap_err();
        assert_eq!(e.code, INVALID_STATE);
        let current = d
            .call("rpc_get_methods", Some(&json!({"current":true})))
            .unwrap();
        assert!(current
            .as_array()
            .unwrap()
            .contains(&json!("framework_start_init")));
        assert!(!current
            .as_array()
            .unwrap()
            .contains(&json!("bdev_get_bdevs")));
        d.call("framework_start_init", None).unwrap();
        assert!(d.call("bdev_get_bdevs", None).is_ok());
        assert_eq!(
            d.call("framework_start_init", None).unwrap_err().code,
            INVALID_STATE
        );
        assert_eq!(d.call("framework_wait_init", None).unwrap(), json!(true));
    }

    #[test]
    fn kill_instance_signals_only_after_the_response() {
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = std::sync::Arc::clone(&got);
        let d = Daemon::new(
            Target::new(Box::new(SocketDataPlane::new(vec![0]))),
            true,
            Box::new(move |sig| g.lock().unwrap().push(sig)),
        );
        assert_eq!(
            d.call("spdk_kill_instance", Some(&json!({"sig_name": "SIGINT"})))
                .unwrap(),
            json!(true)
        );
        assert!(
            got.lock().unwrap().is_empty(),
            "signalled before the response"
        );
        d.responded();
        assert_eq!(*got.lock().unwrap(), vec![libc::SIGINT]);
        // Once only; a bad signal name requests nothing.
        d.responded();
        assert!(d
            .call("spdk_kill_instance", Some(&json!({"sig_name": "SIGFOO"})))
            .is_err());
        d.responded();
        assert_eq!(*got.lock().unwrap(), vec![libc::SIGINT]);
    }

    #[test]
    fn version_rejects_params() {
        let d = daemon(true);
        assert!(d.call("spdk_get_version", None).is_ok());
        assert_eq!(
            d.call("spdk_get_version", Some(&json!({})))
                .unwrap_err()
                .code,
            -32602
        );
        assert_eq!(d.call("no_such", None).unwrap_err().code, -32601);
    }

    #[test]
    fn config_roundtrip_in_process() {
        let d = daemon(true);
        d.call(
            "bdev_null_create",
            Some(&json!({"name":"N0","block_size":512,"num_blocks":1024})),
        )
        .unwrap();
        d.call(
            "nvmf_create_transport",
            Some(&json!({"trtype":"VFIOUSER","disable_mappable_bar0":true})),
        )
        .unwrap();
        d.call(
            "nvmf_create_subsystem",
            Some(&json!({"nqn":"nqn.2019-07.io.spdk:cnode0","allow_any_host":true})),
        )
        .unwrap();
        d.call(
            "nvmf_subsystem_add_ns",
            Some(&json!({"nqn":"nqn.2019-07.io.spdk:cnode0","namespace":{"bdev_name":"N0"}})),
        )
        .unwrap();
        let save = |d: &Daemon| {
            json!({"subsystems": [
                {"subsystem":"bdev","config": d.call("framework_get_config", Some(&json!({"name":"bdev"}))).unwrap()},
                {"subsystem":"nvmf","config": d.call("framework_get_config", Some(&json!({"name":"nvmf"}))).unwrap()}
            ]})
        };
        let first = save(&d);
        let d2 = daemon(false);
        d2.apply_config(&first).unwrap();
        assert_eq!(save(&d2), first);
        assert!(d2.is_initialized());
    }

    #[test]
    fn config_with_unknown_method_is_rejected() {
        let d = daemon(true);
        let cfg = json!({"subsystems":[{"subsystem":"x","config":[{"method":"bogus"}]}]});
        assert!(d.apply_config(&cfg).is_err());
        assert!(parse_config(&json!({})).is_err());
    }
}
