//! `sluice rpc`: an rpc.py-compatible client. Positional arguments and flags per method
//! follow `scripts/rpc.py`; `store_true` flags are sent as `false` when absent (as rpc.py
//! does); `save_config` / `load_config` are client-side compositions like rpc.py's.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::jsonrpc::{Decoded, StreamDecoder};

/// Default RPC socket of the daemon and the client.
pub const DEFAULT_SOCKET: &str = "/var/tmp/sluice.sock";

/// Client errors (each printed, exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad command line.
    #[error("{0}")]
    Usage(String),
    /// Could not reach the daemon.
    #[error("cannot connect to {path}: {source}. Is `sluice serve` running (use -s to pick its socket)?")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// I/O during the call.
    #[error("RPC I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Timed out waiting for a response.
    #[error("timed out waiting for the response to {0}")]
    Timeout(String),
    /// The server answered an error.
    #[error("{method}: JSON-RPC error {code}: {message}")]
    Rpc {
        /// Method called.
        method: String,
        /// Request sent (pretty-printed when reported).
        request: Box<Value>,
        /// Error code.
        code: i64,
        /// Error message.
        message: String,
    },
    /// The server sent something that is not a response.
    #[error("invalid response: {0}")]
    Protocol(String),
}

/// A connection to the daemon, with rpc.py's request numbering (ids 1..n).
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: StreamDecoder,
    pending: Vec<Value>,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connect to `path`, waiting at most `timeout` for each response.
    pub fn connect(path: &str, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Self {
            stream,
            decoder: StreamDecoder::new(),
            pending: Vec::new(),
            next_id: 1,
            timeout,
        })
    }

    /// Call `method`; `params` is omitted from the request when `None`.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let (Some(p), Some(o)) = (params, req.as_object_mut()) {
            o.insert("params".into(), p);
        }
        let text =
            serde_json::to_string_pretty(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        tracing::debug!(request = %text, "rpc request");
        self.stream.write_all(text.as_bytes())?;
        let resp = self.read_response(method)?;
        if resp.get("id") != Some(&json!(id)) && resp.get("id") != Some(&Value::Null) {
            return Err(ClientError::Protocol(format!("unexpected id in {resp}")));
        }
        if let Some(err) = resp.get("error") {
            return Err(ClientError::Rpc {
                method: method.to_owned(),
                request: Box::new(req),
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        resp.get("result")
            .cloned()
            .ok_or_else(|| ClientError::Protocol(format!("no result in {resp}")))
    }

    fn read_response(&mut self, method: &str) -> Result<Value, ClientError> {
        let deadline = std::time::Instant::now() + self.timeout;
        let mut buf = [0u8; 64 * 1024];
        loop {
            if !self.pending.is_empty() {
                return Ok(self.pending.remove(0));
            }
            if std::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(method.to_owned()));
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err(ClientError::Protocol("connection closed".into())),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(method.to_owned()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            for d in self.decoder.feed(buf.get(..n).unwrap_or(&[])) {
                match d {
                    Decoded::Value(v) => self.pending.push(v),
                    Decoded::ParseError => {
                        return Err(ClientError::Protocol("unparsable response".into()))
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
    Float,
    /// `store_true`: sent as false when absent.
    True,
    /// `store_false`: sent as true when absent.
    False,
}

/// One rpc.py option: `-s`/`--long`, stored at `[under.]long_with_underscores` (dots nest).
#[derive(Debug, Clone, Copy)]
struct Flag {
    short: Option<char>,
    long: &'static str,
    under: Option<&'static str>,
    kind: Kind,
    required: bool,
}

impl Flag {
    /// The same option, required.
    const fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }

    /// The params key: the long name with `_` for `-`, under its parent object if any.
    fn key(&self) -> String {
        let leaf = self.long.replace('-', "_");
        match self.under {
            Some(parent) => format!("{parent}.{leaf}"),
            None => leaf,
        }
    }

    /// Whether `name` (`-s` or `--long`) names this option.
    fn is_named(&self, name: &str) -> bool {
        match name.strip_prefix("--") {
            Some(long) => self.long == long,
            None => {
                let mut chars = name.strip_prefix('-').unwrap_or("").chars();
                self.short.is_some() && chars.next() == self.short && chars.next().is_none()
            }
        }
    }
}

/// An optional `-short`/`--long` option.
const fn f(short: char, long: &'static str, kind: Kind) -> Flag {
    Flag {
        short: Some(short),
        long,
        under: None,
        kind,
        required: false,
    }
}

/// An optional option with no short form.
const fn l(long: &'static str, kind: Kind) -> Flag {
    Flag {
        short: None,
        long,
        under: None,
        kind,
        required: false,
    }
}

/// An option of the `listen_address` object.
const fn la(short: char, long: &'static str, kind: Kind) -> Flag {
    Flag {
        under: Some("listen_address"),
        ..f(short, long, kind)
    }
}

/// An option of the `namespace` object.
const fn ns(short: Option<char>, long: &'static str, kind: Kind) -> Flag {
    Flag {
        short,
        long,
        under: Some("namespace"),
        kind,
        required: false,
    }
}

/// One positional: destination key, kind, optional.
type Pos = (&'static str, Kind, bool);

struct Spec {
    pos: &'static [Pos],
    flags: Vec<Flag>,
}

impl Spec {
    fn flags(&self) -> impl Iterator<Item = &Flag> {
        self.flags.iter()
    }
}

use Kind::{False, Float, Int, Str, True};

const TGT: Flag = f('t', "tgt-name", Str);

/// `nvmf_subsystem_add_listener` / `_remove_listener`: the listen address.
const LISTEN_ADDRESS: &[Flag] = &[
    la('t', "trtype", Str).required(),
    la('a', "traddr", Str).required(),
    la('f', "adrfam", Str),
    la('s', "trsvcid", Str),
    f('p', "tgt-name", Str),
];

/// `bdev_null_create` / `bdev_malloc_create`: block geometry, metadata and DIF.
const BLOCK_FORMAT: &[Flag] = &[
    f('p', "physical-block-size", Int),
    f('m', "md-size", Int),
    f('u', "uuid", Str),
    f('t', "dif-type", Int),
    f('d', "dif-is-head-of-md", True),
    l("dif-pi-format", Int),
];

fn spec(method: &str) -> Option<Spec> {
    // Options come in groups so that shared groups are written once.
    let s = |pos: &'static [Pos], groups: &[&[Flag]]| {
        Some(Spec {
            pos,
            flags: groups.concat(),
        })
    };
    match method {
        "spdk_get_version"
        | "framework_start_init"
        | "framework_wait_init"
        | "framework_get_subsystems"
        | "bdev_wait_for_examine" => s(&[], &[]),
        "rpc_get_methods" => s(&[], &[&[l("current", True), l("include-aliases", True)]]),
        "framework_get_config" => s(&[("name", Str, false)], &[]),
        "spdk_kill_instance" => s(&[("sig_name", Str, false)], &[]),
        "nvmf_create_transport" => s(
            &[],
            &[&[
                f('t', "trtype", Str).required(),
                f('g', "tgt-name", Str),
                f('q', "max-queue-depth", Int),
                f('m', "max-io-qpairs-per-ctrlr", Int),
                f('c', "in-capsule-data-size", Int),
                f('i', "max-io-size", Int),
                f('u', "io-unit-size", Int),
                f('a', "max-aq-depth", Int),
                f('n', "num-shared-buffers", Int),
                f('b', "buf-cache-size", Int),
                f('z', "zcopy", True),
                f('o', "c2h-success", False),
                f('f', "dif-insert-or-strip", True),
                f('x', "abort-timeout-sec", Int),
                f('w', "no-wr-batching", True),
                f('M', "disable-mappable-bar0", True),
                f('I', "disable-adaptive-irq", True),
                f('S', "disable-shadow-doorbells", True),
                l("acceptor-poll-rate", Int),
                l("no-srq", True),
                l("disable-command-passthru", True),
                l("kas", Int),
                l("min-kato", Int),
                l("require-sealed-dma", True),
                l("dma-timeout-ms", Int),
            ]],
        ),
        "nvmf_get_transports" => s(&[], &[&[f('t', "trtype", Str), f('g', "tgt-name", Str)]]),
        "nvmf_create_subsystem" => s(
            &[("nqn", Str, false)],
            &[&[
                TGT,
                f('s', "serial-number", Str),
                f('d', "model-number", Str),
                f('a', "allow-any-host", True),
                f('r', "ana-reporting", True),
                f('m', "max-namespaces", Int),
                f('i', "min-cntlid", Int),
                f('I', "max-cntlid", Int),
                l("admin-label", Str),
                l("passthrough", True),
                l("enable-nssr", True),
            ]],
        ),
        "nvmf_delete_subsystem" | "nvmf_subsystem_get_controllers" => {
            s(&[("nqn", Str, false)], &[&[TGT]])
        }
        "nvmf_get_subsystems" => s(&[("nqn", Str, true)], &[&[TGT]]),
        "nvmf_get_stats" => s(&[], &[&[TGT]]),
        "nvmf_subsystem_add_ns" => s(
            &[("nqn", Str, false), ("namespace.bdev_name", Str, false)],
            &[&[
                TGT,
                ns(Some('n'), "nsid", Int),
                ns(Some('g'), "nguid", Str),
                ns(Some('e'), "eui64", Str),
                ns(Some('u'), "uuid", Str),
                ns(Some('a'), "anagrpid", Int),
                ns(None, "no-auto-visible", True),
                ns(None, "hide-metadata", True),
            ]],
        ),
        "nvmf_subsystem_remove_ns" => s(&[("nqn", Str, false), ("nsid", Int, false)], &[&[TGT]]),
        "nvmf_subsystem_add_listener" => s(
            &[("nqn", Str, false)],
            &[
                LISTEN_ADDRESS,
                &[
                    f('k', "secure-channel", True),
                    f('n', "ana-state", Str),
                    l("sock-impl", Str),
                    l("numa-id", Int),
                ],
            ],
        ),
        "nvmf_subsystem_remove_listener" => s(&[("nqn", Str, false)], &[LISTEN_ADDRESS]),
        "bdev_null_create" => s(
            &[
                ("name", Str, false),
                ("@total_size", Float, false),
                ("block_size", Int, false),
            ],
            &[BLOCK_FORMAT],
        ),
        "bdev_malloc_create" => s(
            &[("@total_size", Float, false), ("block_size", Int, false)],
            // md_interleave before dif_is_head_of_md (rpc.py's order of the defaults).
            &[
                &[
                    f('b', "name", Str),
                    f('o', "optimal-io-boundary", Int),
                    f('i', "md-interleave", True),
                    l("numa-id", Int),
                ],
                BLOCK_FORMAT,
            ],
        ),
        "bdev_nbd_client_create" => s(
            &[("name", Str, false)],
            &[&[
                f('s', "socket-path", Str),
                f('a', "address", Str),
                f('e', "export-name", Str),
                f('b', "block-size", Int),
                f('t', "timeout-ms", Int),
                f('u', "uuid", Str),
            ]],
        ),
        "bdev_null_delete"
        | "bdev_malloc_delete"
        | "bdev_aio_delete"
        | "bdev_uring_delete"
        | "bdev_nbd_client_delete" => s(&[("name", Str, false)], &[]),
        "bdev_aio_create" => s(
            &[
                ("filename", Str, false),
                ("name", Str, false),
                ("block_size", Int, true),
            ],
            &[&[
                f('r', "readonly", True),
                f('f', "fallocate", True),
                f('u', "uuid", Str),
                f('n', "nowait", True),
            ]],
        ),
        "bdev_uring_create" => s(
            &[
                ("filename", Str, false),
                ("name", Str, false),
                ("block_size", Int, true),
            ],
            &[&[f('u', "uuid", Str)]],
        ),
        "bdev_get_bdevs" => s(&[], &[&[f('b', "name", Str), f('t', "timeout", Int)]]),
        "bdev_get_iostat" => s(
            &[],
            &[&[
                f('b', "name", Str),
                f('c', "per-channel", True),
                l("reset-mode", Str),
            ]],
        ),
        "bdev_set_qos_limit" => s(
            &[("name", Str, false)],
            &[&[
                l("rw-ios-per-sec", Int),
                l("rw-mbytes-per-sec", Int),
                l("r-mbytes-per-sec", Int),
                l("w-mbytes-per-sec", Int),
            ]],
        ),
        _ => None,
    }
}

fn convert(kind: Kind, key: &str, text: &str) -> Result<Value, ClientError> {
    let usage =
        |what: &str| ClientError::Usage(format!("argument {key}: invalid {what} value: '{text}'"));
    match kind {
        Kind::Str => Ok(json!(text)),
        Kind::Int => text
            .parse::<i64>()
            .map(|v| json!(v))
            .map_err(|_| usage("int")),
        Kind::Float => text
            .parse::<f64>()
            .map(|v| json!(v))
            .map_err(|_| usage("float")),
        Kind::True | Kind::False => Err(usage("flag")),
    }
}

fn insert_path(obj: &mut Map<String, Value>, key: &str, v: Value) {
    match key.split_once('.') {
        Some((head, rest)) => {
            let entry = obj
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, v);
            }
        }
        None => {
            obj.insert(key.to_owned(), v);
        }
    }
}

/// Turn `METHOD ARGS...` into JSON params exactly as rpc.py would send them.
/// Returns `None` params when rpc.py would omit them.
pub fn build_params(method: &str, args: &[String]) -> Result<Option<Value>, ClientError> {
    let spec = spec(method).ok_or_else(|| {
        ClientError::Usage(format!(
            "unknown method '{method}' (see `sluice rpc --help`)"
        ))
    })?;
    let mut obj = Map::new();
    let mut positionals = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0usize;
    while let Some(arg) = args.get(i) {
        i += 1;
        let is_flag = arg.starts_with('-') && arg.len() > 1 && arg.parse::<f64>().is_err();
        if !is_flag {
            positionals.push(arg.clone());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let flag = spec.flags().find(|f| f.is_named(&name)).ok_or_else(|| {
            ClientError::Usage(format!("{method}: unrecognized argument '{arg}'"))
        })?;
        let key = flag.key();
        let value = match flag.kind {
            Kind::True => json!(true),
            Kind::False => json!(false),
            _ => {
                let text = match inline {
                    Some(t) => t,
                    None => {
                        let t = args.get(i).cloned().ok_or_else(|| {
                            ClientError::Usage(format!("{method}: argument {name} expects a value"))
                        })?;
                        i += 1;
                        t
                    }
                };
                convert(flag.kind, &key, &text)?
            }
        };
        insert_path(&mut obj, &key, value);
        seen.push(key);
    }
    for flag in spec.flags() {
        let key = flag.key();
        if seen.contains(&key) {
            continue;
        }
        if flag.required {
            return Err(ClientError::Usage(format!(
                "{method}: the following argument is required: --{}",
                flag.long
            )));
        }
        match flag.kind {
            Kind::True => insert_path(&mut obj, &key, json!(false)),
            Kind::False => insert_path(&mut obj, &key, json!(true)),
            _ => {}
        }
    }
    let mut pos_iter = positionals.into_iter();
    for (key, kind, optional) in spec.pos {
        match pos_iter.next() {
            Some(text) => {
                let v = convert(*kind, key, &text)?;
                insert_path(&mut obj, key, v);
            }
            None if *optional => {}
            None => {
                return Err(ClientError::Usage(format!(
                    "{method}: the following argument is required: {}",
                    key.trim_start_matches('@')
                )))
            }
        }
    }
    if let Some(extra) = pos_iter.next() {
        return Err(ClientError::Usage(format!(
            "{method}: unrecognized argument '{extra}'"
        )));
    }
    // rpc.py's size conversion: total_size (MiB) -> num_blocks.
    if let Some(total) = obj.remove("@total_size") {
        let mib = total.as_f64().unwrap_or(0.0);
        let bs = obj.get("block_size").and_then(Value::as_i64).unwrap_or(0);
        if bs <= 0 || mib <= 0.0 {
            return Err(ClientError::Usage(format!(
                "{method}: total_size and block_size must be positive"
            )));
        }
        let bytes = mib * 1024.0 * 1024.0;
        // Truncation like rpc.py's int(): sizes here are far below 2^53.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let num_blocks = (bytes as u64) / bs.unsigned_abs();
        obj.insert("num_blocks".into(), json!(num_blocks));
    }
    Ok(if obj.is_empty() {
        None
    } else {
        Some(Value::Object(obj))
    })
}

/// Print a result the way rpc.py does: nothing for `true`, strings bare, JSON indent 2.
pub fn format_result(v: &Value) -> Option<String> {
    match v {
        Value::Bool(true) | Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => serde_json::to_string_pretty(other).ok(),
    }
}

/// rpc.py's `save_config`: every subsystem's `framework_get_config`.
pub fn save_config(client: &mut Client) -> Result<Value, ClientError> {
    let subsystems = client.call("framework_get_subsystems", None)?;
    let mut out = Vec::new();
    for s in subsystems.as_array().cloned().unwrap_or_default() {
        let Some(name) = s.get("subsystem").and_then(Value::as_str) else {
            continue;
        };
        let config = client.call(
            "framework_get_config",
            Some(json!({"name": name, "with_batches": false})),
        )?;
        let config = if config.is_null() { json!([]) } else { config };
        out.push(json!({"subsystem": name, "config": config}));
    }
    Ok(json!({"subsystems": out}))
}

/// rpc.py's `load_config`: replay in passes by framework state, calling
/// `framework_start_init` when it becomes allowed.
pub fn load_config(client: &mut Client, config: &Value) -> Result<(), ClientError> {
    let mut pending =
        crate::daemon::parse_config(config).map_err(|e| ClientError::Usage(e.message))?;
    let all = client.call("rpc_get_methods", Some(json!({"include_aliases": false})))?;
    for (m, _) in &pending {
        if !all.as_array().is_some_and(|a| a.contains(&json!(m))) {
            return Err(ClientError::Usage(format!(
                "load_config: unknown method '{m}' in the configuration"
            )));
        }
    }
    loop {
        let allowed = client.call("rpc_get_methods", Some(json!({"current": true})))?;
        let allowed = allowed.as_array().cloned().unwrap_or_default();
        let mut found = false;
        let mut rest = Vec::new();
        for (m, p) in pending {
            if allowed.contains(&json!(m)) {
                client.call(&m, p)?;
                found = true;
            } else {
                rest.push((m, p));
            }
        }
        pending = rest;
        if allowed.contains(&json!("framework_start_init")) {
            client.call("framework_start_init", None)?;
            found = true;
        }
        if pending.is_empty() || !found {
            break;
        }
    }
    if !pending.is_empty() {
        eprintln!(
            "Some configs were skipped because the RPC state that can call them passed over."
        );
    }
    Ok(())
}

/// Options of `sluice rpc` before the method.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    /// Socket path.
    pub socket: String,
    /// Timeout per call.
    pub timeout: Duration,
}

fn save_config_cmd(client: &mut Client, args: &[String]) -> Result<Option<String>, ClientError> {
    let mut indent = 2i64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-i" | "--indent" => {
                let v = it.next().ok_or_else(|| {
                    ClientError::Usage("save_config: --indent expects a value".into())
                })?;
                indent = v
                    .parse()
                    .map_err(|_| ClientError::Usage(format!("save_config: bad indent '{v}'")))?;
            }
            other => {
                return Err(ClientError::Usage(format!(
                    "save_config: unrecognized argument '{other}'"
                )))
            }
        }
    }
    let cfg = save_config(client)?;
    let text = if indent < 0 {
        serde_json::to_string(&cfg)
    } else {
        let pad = " ".repeat(usize::try_from(indent).unwrap_or(2));
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes());
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&cfg, &mut ser)
            .map(|()| String::from_utf8_lossy(&out).into_owned())
    }
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Some(text))
}

fn load_config_cmd(client: &mut Client, args: &[String]) -> Result<Option<String>, ClientError> {
    let mut file: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-j" | "--json-conf" | "--json" => {
                file = Some(it.next().cloned().ok_or_else(|| {
                    ClientError::Usage("load_config: --json-conf expects a file".into())
                })?);
            }
            "-i" | "--include-aliases" => {}
            other => {
                return Err(ClientError::Usage(format!(
                    "load_config: unrecognized argument '{other}'"
                )))
            }
        }
    }
    let text = match file {
        Some(f) if f != "-" => std::fs::read_to_string(&f)
            .map_err(|e| ClientError::Usage(format!("load_config: cannot read {f}: {e}")))?,
        _ => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    let cfg: Value = serde_json::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("load_config: invalid JSON: {e}")))?;
    load_config(client, &cfg)?;
    Ok(None)
}

/// Run one `sluice rpc` invocation; returns the text to print on success.
pub fn run(
    opts: &RpcOptions,
    method: &str,
    args: &[String],
) -> Result<Option<String>, ClientError> {
    if method != "save_config" && method != "load_config" {
        // Validate the command line before connecting.
        let params = build_params(method, args)?;
        let mut client = Client::connect(&opts.socket, opts.timeout)?;
        let result = client.call(method, params)?;
        return Ok(format_result(&result));
    }
    let mut client = Client::connect(&opts.socket, opts.timeout)?;
    if method == "save_config" {
        save_config_cmd(&mut client, args)
    } else {
        load_config_cmd(&mut client, args)
    }
}

/// Report an error the way rpc.py does (request, then the error object) on stderr.
pub fn report_error(err: &ClientError) {
    match err {
        ClientError::Rpc {
            request,
            code,
            message,
            ..
        } => {
            let req = serde_json::to_string_pretty(request).unwrap_or_default();
            let resp = serde_json::to_string_pretty(&json!({"code": code, "message": message}))
                .unwrap_or_default();
            eprintln!("request:\n{req}\nGot JSON-RPC error response\nresponse:\n{resp}");
        }
        other => eprintln!("sluice rpc: {other}"),
    }
}

/// Whether a socket path looks like one (rpc.py also accepts IP addresses; Sluice does not).
pub fn is_unix_path(s: &str) -> bool {
    Path::new(s).is_absolute() || s.contains('/')
}

/// Names of the methods `sluice rpc` knows (for help).
pub fn known_methods() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = crate::daemon::METHODS
        .iter()
        .copied()
        .filter(|m| spec(m).is_some())
        .collect();
    v.push("save_config");
    v.push("load_config");
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_daemon_method_has_a_cli_spec() {
        for m in crate::daemon::METHODS {
            assert!(spec(m).is_some(), "{m}");
        }
    }

    #[test]
    fn create_transport_like_rpc_py() {
        let p = build_params("nvmf_create_transport", &a(&["-t", "VFIOUSER"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            json!({"trtype":"VFIOUSER","zcopy":false,"c2h_success":true,"dif_insert_or_strip":false,
                   "no_wr_batching":false,"disable_mappable_bar0":false,"disable_adaptive_irq":false,
                   "disable_shadow_doorbells":false,"no_srq":false,"disable_command_passthru":false,
                   "require_sealed_dma":false})
        );
        let p = build_params(
            "nvmf_create_transport",
            &a(&[
                "-t",
                "VFIOUSER",
                "--require-sealed-dma",
                "--dma-timeout-ms",
                "500",
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p["require_sealed_dma"], true);
        assert_eq!(p["dma_timeout_ms"], 500);
        let p = build_params(
            "nvmf_create_transport",
            &a(&["-t", "VFIOUSER", "--dma-timeout-ms=0"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p["dma_timeout_ms"], 0);
        assert!(build_params(
            "nvmf_create_transport",
            &a(&["-t", "VFIOUSER", "--dma-timeout-ms", "soon"])
        )
        .is_err());
        assert!(build_params(
            "nvmf_create_transport",
            &a(&["-t", "VFIOUSER", "--dma-timeout-ms"])
        )
        .is_err());
        assert!(build_params("nvmf_create_transport", &[]).is_err());
    }

    #[test]
    fn subsystem_and_ns_and_listener() {
        let p = build_params(
            "nvmf_create_subsystem",
            &a(&["-a", "-s", "SN0", "-m", "64", "nqn.2019-07.io.spdk:cnode0"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p["allow_any_host"], json!(true));
        assert_eq!(p["max_namespaces"], json!(64));
        assert_eq!(p["nqn"], json!("nqn.2019-07.io.spdk:cnode0"));
        assert_eq!(p["ana_reporting"], json!(false));
        let p = build_params("nvmf_subsystem_add_ns", &a(&["nqn.x", "Null0", "-n", "3"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            p["namespace"],
            json!({"bdev_name":"Null0","nsid":3,"no_auto_visible":false,"hide_metadata":false})
        );
        let p = build_params(
            "nvmf_subsystem_add_listener",
            &a(&["nqn.x", "-t", "VFIOUSER", "-a", "/d", "-s", "0"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            p["listen_address"],
            json!({"trtype":"VFIOUSER","traddr":"/d","trsvcid":"0"})
        );
        assert_eq!(p["secure_channel"], json!(false));
    }

    #[test]
    fn sizes_convert_to_blocks() {
        let p = build_params("bdev_null_create", &a(&["Null0", "102400", "512"]))
            .unwrap()
            .unwrap();
        assert_eq!(p["num_blocks"], json!(102400u64 * 2048));
        assert!(p.get("@total_size").is_none());
        let p = build_params("bdev_malloc_create", &a(&["64", "512", "-b", "Malloc1"]))
            .unwrap()
            .unwrap();
        assert_eq!(p["num_blocks"], json!(131072));
        assert_eq!(p["name"], json!("Malloc1"));
    }

    #[test]
    fn usage_errors() {
        assert!(build_params("bdev_null_create", &a(&["Null0", "x", "512"])).is_err());
        assert!(build_params("bdev_null_create", &a(&["Null0"])).is_err());
        assert!(build_params("bdev_null_create", &a(&["N", "1", "512", "extra"])).is_err());
        assert!(build_params("bdev_null_create", &a(&["N", "1", "512", "--bogus"])).is_err());
        assert!(build_params("nope", &[]).is_err());
        assert_eq!(build_params("spdk_get_version", &[]).unwrap(), None);
    }

    #[test]
    fn result_printing() {
        assert_eq!(format_result(&json!(true)), None);
        assert_eq!(format_result(&json!("Null0")), Some("Null0".into()));
        assert_eq!(format_result(&json!(1)), Some("1".into()));
        assert_eq!(format_result(&json!([1])), Some("[\n  1\n]".into()));
    }
}
