//! NBD client backend: newstyle fixed handshake with `NBD_OPT_GO` (fallback
//! `NBD_OPT_EXPORT_NAME`), over a Unix socket or TCP, simple replies.
//!
//! Threads: the poll thread never touches the socket. One manager thread per bdev owns the
//! connection (connect, handshake, send requests); one reader thread per connection reads
//! replies and completes requests. Flush / FUA / trim / write zeroes are offered only when
//! the server advertises them.
//!
//! Failure handling:
//! * The server goes away: requests in flight fail with [`IoError::Transport`]; the manager
//!   reconnects with exponential backoff (100 ms .. 2 s).
//! * While disconnected, new requests wait up to `io_timeout` for a reconnect, then fail
//!   with [`IoError::Timeout`]. No request is ever pending longer than `io_timeout` (plus
//!   one sweep interval): a request without reply by then fails with `Timeout` and the
//!   connection is considered hung and is re-established.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::{
    sys, validate, Bdev, BdevCaps, BdevError, BdevInfo, IoChannel, IoCompletion, IoError, IoOp,
    IoRequest, RejectReason, Rejected,
};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

const TF_HAS_FLAGS: u16 = 1 << 0;
const TF_READ_ONLY: u16 = 1 << 1;
const TF_SEND_FLUSH: u16 = 1 << 2;
const TF_SEND_FUA: u16 = 1 << 3;
const TF_SEND_TRIM: u16 = 1 << 5;
const TF_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_FLAG_FUA: u16 = 1;

/// Largest request we send (servers commonly accept 32 MiB).
pub const NBD_MAX_IO: u64 = 4 << 20;
/// Per-channel queue depth.
pub const NBD_QUEUE_DEPTH: u32 = 128;
/// Largest option reply payload accepted during the handshake.
const MAX_OPT_REPLY: u32 = 64 * 1024;

/// Where the NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// Unix socket path.
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

/// NBD bdev options.
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Bdev name.
    pub name: String,
    /// Server address.
    pub addr: NbdAddr,
    /// Export name ("" = default export).
    pub export: String,
    /// Logical block size exposed (power of two >= 512).
    pub block_size: u32,
    /// Bound on any request's life (also the connect/handshake timeout).
    pub io_timeout: Duration,
    /// UUID (random if `None`).
    pub uuid: Option<uuid::Uuid>,
}

impl NbdOptions {
    /// Defaults: 512-byte blocks, 10 s timeout.
    pub fn new(name: &str, addr: NbdAddr, export: &str) -> Self {
        NbdOptions {
            name: name.to_owned(),
            addr,
            export: export.to_owned(),
            block_size: 512,
            io_timeout: Duration::from_secs(10),
            uuid: None,
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(addr: &NbdAddr, timeout: Duration) -> std::io::Result<Stream> {
        let s = match addr {
            NbdAddr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            NbdAddr::Tcp(hp) => {
                let mut last = None;
                let mut conn = None;
                for a in hp.to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            conn = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = conn.ok_or_else(|| {
                    last.unwrap_or_else(|| std::io::Error::other("no address resolved"))
                })?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
        };
        s.set_timeouts(Some(timeout), Some(timeout))?;
        Ok(s)
    }

    fn set_timeouts(&self, r: Option<Duration>, w: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(r)?;
                s.set_write_timeout(w)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(r)?;
                s.set_write_timeout(w)
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the handshake learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Export {
    size: u64,
    flags: u16,
    min_block: u32,
}

fn read_u16(s: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64(s: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn nbd_err(msg: impl Into<String>) -> BdevError {
    BdevError::Nbd(msg.into())
}

/// Newstyle fixed handshake; returns the export description.
fn handshake(s: &mut Stream, export: &str) -> Result<Export, BdevError> {
    let io = |e: std::io::Error| BdevError::io("NBD handshake", e);
    if read_u64(s).map_err(io)? != NBDMAGIC {
        return Err(nbd_err("bad server magic (not an NBD server?)"));
    }
    if read_u64(s).map_err(io)? != IHAVEOPT {
        return Err(nbd_err("server does not speak the newstyle protocol"));
    }
    let hflags = read_u16(s).map_err(io)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(nbd_err("server lacks the fixed newstyle handshake"));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 });
    s.write_all(&cflags.to_be_bytes()).map_err(io)?;

    let name = export.as_bytes();
    let name_len = u32::try_from(name.len()).map_err(|_| nbd_err("export name too long"))?;
    if name_len > 4096 {
        return Err(nbd_err("export name too long"));
    }
    // NBD_OPT_GO: name, one info request (block size).
    let mut data = Vec::with_capacity(name.len() + 8);
    data.extend_from_slice(&name_len.to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &data).map_err(io)?;
    let mut size_flags: Option<(u64, u16)> = None;
    let mut min_block = 1u32;
    loop {
        let magic = read_u64(s).map_err(io)?;
        let opt = read_u32(s).map_err(io)?;
        let rtype = read_u32(s).map_err(io)?;
        let len = read_u32(s).map_err(io)?;
        if magic != REPLY_MAGIC_OPT || opt != OPT_GO {
            return Err(nbd_err("bad option reply header"));
        }
        if len > MAX_OPT_REPLY {
            return Err(nbd_err(format!("option reply too long ({len} bytes)")));
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).map_err(io)?;
        match rtype {
            REP_ACK => break,
            REP_INFO => {
                let mut p = payload.as_slice();
                let kind = read_u16(&mut p).map_err(io)?;
                match kind {
                    INFO_EXPORT => {
                        let size = read_u64(&mut p).map_err(io)?;
                        let flags = read_u16(&mut p).map_err(io)?;
                        size_flags = Some((size, flags));
                    }
                    INFO_BLOCK_SIZE => {
                        min_block = read_u32(&mut p).map_err(io)?;
                    }
                    _ => {}
                }
            }
            REP_ERR_UNSUP => {
                // Old server: NBD_OPT_EXPORT_NAME (no error path: it closes on failure).
                send_option(s, OPT_EXPORT_NAME, name).map_err(io)?;
                let size = read_u64(s).map_err(io)?;
                let flags = read_u16(s).map_err(io)?;
                if !no_zeroes {
                    let mut z = [0u8; 124];
                    s.read_exact(&mut z).map_err(io)?;
                }
                size_flags = Some((size, flags));
                break;
            }
            e if e & 0x8000_0000 != 0 => {
                let msg = String::from_utf8_lossy(&payload).into_owned();
                return Err(nbd_err(format!(
                    "server refused export '{export}' (error {e:#x}): {msg}"
                )));
            }
            _ => {}
        }
    }
    let (size, flags) = size_flags.ok_or_else(|| nbd_err("server sent no export size"))?;
    Ok(Export {
        size,
        flags,
        min_block,
    })
}

fn send_option(s: &mut Stream, opt: u32, data: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

fn connect(opts: &NbdOptions) -> Result<(Stream, Export), BdevError> {
    let mut s = Stream::connect(&opts.addr, opts.io_timeout)
        .map_err(|e| BdevError::io(format!("cannot connect to NBD server {:?}", opts.addr), e))?;
    let ex = handshake(&mut s, &opts.export)?;
    Ok((s, ex))
}

/// One request handed to the manager thread.
struct Cmd {
    io: IoRequest,
    reply: Sender<IoCompletion>,
    deadline: Instant,
}

/// A request sent on a connection, awaiting its reply.
struct Pending {
    cmd: Cmd,
    generation: u64,
}

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    /// Generation of the live connection (0: none).
    generation: AtomicU64,
    shutdown: AtomicBool,
    connected: AtomicBool,
}

impl Shared {
    /// Fail every pending request of `generation` (or all if `None`).
    fn fail_pending(&self, generation: Option<u64>, err: IoError) {
        let victims: Vec<Pending> = match self.pending.lock() {
            Ok(mut p) => {
                let keys: Vec<u64> = p
                    .iter()
                    .filter(|(_, v)| generation.is_none_or(|g| v.generation == g))
                    .map(|(k, _)| *k)
                    .collect();
                keys.iter().filter_map(|k| p.remove(k)).collect()
            }
            Err(_) => Vec::new(),
        };
        for v in victims {
            complete(v.cmd, Err(err));
        }
    }
}

fn complete(cmd: Cmd, result: Result<(), IoError>) {
    let tag = cmd.io.tag;
    drop(cmd.io);
    let _ = cmd.reply.send(IoCompletion { tag, result });
}

/// An NBD-backed bdev.
pub struct NbdBdev {
    info: BdevInfo,
    opts: NbdOptions,
    tx: Sender<Cmd>,
    shared: Arc<Shared>,
    export_flags: u16,
}

impl std::fmt::Debug for NbdBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdBdev")
            .field("name", &self.info.name)
            .field("addr", &self.opts.addr)
            .finish()
    }
}

impl NbdBdev {
    /// Connect (the server must be reachable now), then keep the connection alive in the
    /// background.
    pub fn connect(opts: NbdOptions) -> Result<Self, BdevError> {
        if opts.name.is_empty() {
            return Err(BdevError::InvalidParam("name must not be empty".into()));
        }
        if opts.block_size < 512 || !opts.block_size.is_power_of_two() || opts.block_size > 65536 {
            return Err(BdevError::InvalidParam(format!(
                "block_size {} must be a power of two between 512 and 65536",
                opts.block_size
            )));
        }
        if opts.io_timeout.is_zero() {
            return Err(BdevError::InvalidParam("io_timeout must be > 0".into()));
        }
        let (stream, ex) = connect(&opts)?;
        if ex.min_block > opts.block_size {
            return Err(BdevError::InvalidParam(format!(
                "server minimum block size {} exceeds block_size {}",
                ex.min_block, opts.block_size
            )));
        }
        let num_blocks = ex.size / u64::from(opts.block_size);
        if num_blocks == 0 {
            return Err(nbd_err(format!("export is too small ({} bytes)", ex.size)));
        }
        let f = if ex.flags & TF_HAS_FLAGS != 0 {
            ex.flags
        } else {
            0
        };
        let info = BdevInfo {
            name: opts.name.clone(),
            product_name: "NBD disk".into(),
            block_size: opts.block_size,
            num_blocks,
            uuid: opts.uuid.unwrap_or_else(uuid::Uuid::new_v4),
            caps: BdevCaps {
                read: true,
                write: f & TF_READ_ONLY == 0,
                flush: f & TF_SEND_FLUSH != 0,
                unmap: f & TF_SEND_TRIM != 0,
                write_zeroes: f & TF_SEND_WRITE_ZEROES != 0,
                compare: false,
                fua: f & TF_SEND_FUA != 0,
            },
            volatile_write_cache: f & TF_SEND_FLUSH != 0,
            max_queue_depth: NBD_QUEUE_DEPTH,
            required_alignment: 1,
            max_io_bytes: NBD_MAX_IO,
            read_only: f & TF_READ_ONLY != 0,
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            connected: AtomicBool::new(false),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut mgr = Manager {
            opts: opts.clone(),
            shared: Arc::clone(&shared),
            rx,
            stream: None,
            waiting: VecDeque::new(),
            next_cookie: 1,
            next_gen: 1,
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
            size: ex.size,
            dead_rx: None,
            connecting: None,
        };
        mgr.install(stream)?;
        std::thread::Builder::new()
            .name(format!("nbd-{}", opts.name))
            .spawn(move || mgr.run())
            .map_err(|e| BdevError::io("spawn NBD manager thread", e))?;
        Ok(NbdBdev {
            info,
            opts,
            tx,
            shared,
            export_flags: f,
        })
    }

    /// Whether a connection to the server is currently up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }
}

impl Drop for NbdBdev {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Bdev for NbdBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(BdevError::Closed);
        }
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(Box::new(NbdChannel {
            info: self.info.clone(),
            tx: self.tx.clone(),
            done_tx,
            done_rx,
            in_flight: 0,
            timeout: self.opts.io_timeout,
            fua_emulated: Vec::new(),
        }))
    }

    fn driver_specific(&self) -> serde_json::Value {
        let addr = match &self.opts.addr {
            NbdAddr::Unix(p) => serde_json::json!({"unix": p.display().to_string()}),
            NbdAddr::Tcp(a) => serde_json::json!({"tcp": a}),
        };
        serde_json::json!({"nbd": {
            "address": addr,
            "export": self.opts.export,
            "connected": self.is_connected(),
            "transmission_flags": self.export_flags,
            "io_timeout_ms": u64::try_from(self.opts.io_timeout.as_millis()).unwrap_or(u64::MAX),
        }})
    }

    fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const SWEEP: Duration = Duration::from_millis(20);

struct Manager {
    opts: NbdOptions,
    shared: Arc<Shared>,
    rx: Receiver<Cmd>,
    stream: Option<Stream>,
    /// Requests received while disconnected.
    waiting: VecDeque<Cmd>,
    next_cookie: u64,
    next_gen: u64,
    backoff: Duration,
    next_attempt: Instant,
    size: u64,
    /// Signalled (closed) by the reader thread when the connection dies.
    dead_rx: Option<Receiver<()>>,
    /// Result of an in-progress reconnect attempt.
    connecting: Option<Receiver<Result<(Stream, Export), BdevError>>>,
}

impl Manager {
    /// Start using a freshly handshaken stream: spawn its reader.
    fn install(&mut self, s: Stream) -> Result<(), BdevError> {
        // Requests are bounded by our own sweep; reads block until data or shutdown.
        s.set_timeouts(None, Some(self.opts.io_timeout))
            .map_err(|e| BdevError::io("socket timeouts", e))?;
        let rs = s
            .try_clone()
            .map_err(|e| BdevError::io("clone NBD socket", e))?;
        let generation = self.next_gen;
        self.next_gen += 1;
        let (dead_tx, dead_rx) = crossbeam_channel::bounded::<()>(1);
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name(format!("nbd-rd-{}", self.opts.name))
            .spawn(move || reader(rs, shared, generation, dead_tx))
            .map_err(|e| BdevError::io("spawn NBD reader thread", e))?;
        self.shared.generation.store(generation, Ordering::Release);
        self.shared.connected.store(true, Ordering::Release);
        self.stream = Some(s);
        self.dead_rx = Some(dead_rx);
        self.backoff = BACKOFF_MIN;
        Ok(())
    }

    fn drop_connection(&mut self, why: &str) {
        if let Some(s) = self.stream.take() {
            tracing::warn!(bdev = %self.opts.name, reason = why, "NBD connection lost, reconnecting");
            s.shutdown();
        }
        self.dead_rx = None;
        self.shared.connected.store(false, Ordering::Release);
        let g = self.shared.generation.swap(0, Ordering::AcqRel);
        self.shared.fail_pending(Some(g), IoError::Transport);
        self.next_attempt = Instant::now();
    }

    /// Reconnect without blocking the manager: the connect + handshake (bounded by
    /// `io_timeout`) runs on a short-lived helper thread, so request deadlines keep being
    /// enforced meanwhile.
    fn try_reconnect(&mut self) {
        if let Some(rx) = &self.connecting {
            let res = match rx.try_recv() {
                Ok(r) => r,
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Err(nbd_err("connect helper thread died"))
                }
            };
            self.connecting = None;
            match res {
                Ok((s, ex)) => {
                    if ex.size != self.size {
                        tracing::warn!(bdev = %self.opts.name, old = self.size, new = ex.size,
                            "NBD export size changed across reconnect");
                        self.size = ex.size;
                    }
                    match self.install(s) {
                        Ok(()) => tracing::info!(bdev = %self.opts.name, "NBD reconnected"),
                        Err(e) => {
                            tracing::warn!(bdev = %self.opts.name, error = %e, "NBD reconnect failed");
                            self.schedule_retry();
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(bdev = %self.opts.name, error = %e, backoff = ?self.backoff, "NBD reconnect failed");
                    self.schedule_retry();
                }
            }
            return;
        }
        if Instant::now() < self.next_attempt {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let opts = self.opts.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{}", self.opts.name))
            .spawn(move || {
                let _ = tx.send(connect(&opts));
            });
        match spawned {
            Ok(_) => self.connecting = Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot spawn NBD connect thread");
                self.schedule_retry();
            }
        }
    }

    fn schedule_retry(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Encode and send one request; `Err` means the connection broke.
    fn send(&mut self, cmd: Cmd) -> Result<(), ()> {
        let io = &cmd.io;
        let (ty, flags) = match io.op {
            IoOp::Read | IoOp::Compare => (CMD_READ, 0),
            IoOp::Write { fua } => (CMD_WRITE, if fua { CMD_FLAG_FUA } else { 0 }),
            IoOp::Flush => (CMD_FLUSH, 0),
            IoOp::Unmap => (CMD_TRIM, 0),
            IoOp::WriteZeroes => (CMD_WRITE_ZEROES, 0),
        };
        let (off, len) = if io.op == IoOp::Flush {
            (0u64, 0u32)
        } else {
            match u32::try_from(io.len) {
                Ok(l) => (io.offset, l),
                Err(_) => {
                    complete(cmd, Err(IoError::Invalid));
                    return Ok(());
                }
            }
        };
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1).max(1);
        let payload = if ty == CMD_WRITE { len as usize } else { 0 };
        let mut m = Vec::with_capacity(28 + payload);
        m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&ty.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&off.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        if payload > 0 {
            m.resize(28 + payload, 0);
            if let Some(dst) = m.get_mut(28..) {
                sys::copy_from_iovecs(&io.iov, 0, dst);
            }
        }
        let generation = self.shared.generation.load(Ordering::Acquire);
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(cookie, Pending { cmd, generation });
        }
        let Some(s) = self.stream.as_mut() else {
            return Err(());
        };
        s.write_all(&m).map_err(|e| {
            tracing::debug!(error = %e, "NBD send failed");
        })
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        // Requests waiting for a connection.
        while let Some(c) = self.waiting.front() {
            if c.deadline > now {
                break;
            }
            if let Some(c) = self.waiting.pop_front() {
                complete(c, Err(IoError::Timeout));
            }
        }
        // Requests sent without reply in time: fail them and treat the link as hung.
        let expired: Vec<Pending> = match self.shared.pending.lock() {
            Ok(mut p) => {
                let keys: Vec<u64> = p
                    .iter()
                    .filter(|(_, v)| v.cmd.deadline <= now)
                    .map(|(k, _)| *k)
                    .collect();
                keys.iter().filter_map(|k| p.remove(k)).collect()
            }
            Err(_) => Vec::new(),
        };
        if !expired.is_empty() {
            tracing::debug!(bdev = %self.opts.name, n = expired.len(), "NBD requests timed out");
            for v in expired {
                complete(v.cmd, Err(IoError::Timeout));
            }
            self.drop_connection("request timeout");
        }
    }

    fn run(mut self) {
        loop {
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            // Reader noticed the connection died?
            if let Some(d) = &self.dead_rx {
                if matches!(
                    d.try_recv(),
                    Err(crossbeam_channel::TryRecvError::Disconnected) | Ok(())
                ) {
                    self.drop_connection("server closed the connection");
                }
            }
            if self.stream.is_none() {
                self.try_reconnect();
            }
            let first = match self.rx.recv_timeout(SWEEP) {
                Ok(c) => Some(c),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    // Bdev and every channel gone.
                    if self.waiting.is_empty() {
                        break;
                    }
                    std::thread::sleep(SWEEP);
                    None
                }
            };
            let mut batch: Vec<Cmd> = first.into_iter().collect();
            batch.extend(self.rx.try_iter().take(256));
            if self.stream.is_some() {
                let mut todo: Vec<Cmd> = self.waiting.drain(..).collect();
                todo.extend(batch);
                let mut it = todo.into_iter();
                for c in it.by_ref() {
                    if self.send(c).is_err() {
                        self.drop_connection("send failed");
                        break;
                    }
                }
                // Not sent because the link broke: wait for the reconnect.
                self.waiting.extend(it);
            } else {
                self.waiting.extend(batch);
            }
            self.sweep();
        }
        // Shutdown: politely disconnect, fail everything left.
        if let Some(mut s) = self.stream.take() {
            let mut m = Vec::with_capacity(28);
            m.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            m.extend_from_slice(&0u16.to_be_bytes());
            m.extend_from_slice(&CMD_DISC.to_be_bytes());
            m.extend_from_slice(&[0u8; 20]);
            let _ = s.write_all(&m);
            s.shutdown();
        }
        self.shared.connected.store(false, Ordering::Release);
        self.shared.fail_pending(None, IoError::Aborted);
        for c in self.waiting.drain(..) {
            complete(c, Err(IoError::Aborted));
        }
        for c in self.rx.try_iter() {
            complete(c, Err(IoError::Aborted));
        }
    }
}

/// Reader thread: parse simple replies, move read data into the guest iovecs, complete.
fn reader(mut s: Stream, shared: Arc<Shared>, generation: u64, dead: Sender<()>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut hdr = [0u8; 16];
        if let Err(e) = s.read_exact(&mut hdr) {
            tracing::debug!(error = %e, "NBD reader: connection closed");
            break;
        }
        let mut h = &hdr[..];
        let (Ok(magic), Ok(error), Ok(cookie)) =
            (read_u32(&mut h), read_u32(&mut h), read_u64(&mut h))
        else {
            break;
        };
        if magic != SIMPLE_REPLY_MAGIC {
            tracing::debug!(magic, "NBD reader: bad reply magic");
            break;
        }
        let Some(p) = shared
            .pending
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&cookie))
        else {
            // Unknown or timed-out cookie: we cannot know its payload length; resync by
            // dropping the connection.
            tracing::debug!(cookie, "NBD reader: reply for unknown request");
            break;
        };
        let op = p.cmd.io.op;
        if error != 0 {
            let e = IoError::from_errno(i32::try_from(error).unwrap_or(libc::EIO), op);
            complete(p.cmd, Err(e));
            continue;
        }
        if op == IoOp::Read {
            let Ok(len) = usize::try_from(p.cmd.io.len) else {
                complete(p.cmd, Err(IoError::Internal));
                break;
            };
            buf.resize(len, 0);
            if let Err(e) = s.read_exact(&mut buf) {
                tracing::debug!(error = %e, "NBD reader: short read payload");
                complete(p.cmd, Err(IoError::Transport));
                break;
            }
            sys::copy_to_iovecs(&p.cmd.io.iov, 0, &buf);
        }
        complete(p.cmd, Ok(()));
    }
    shared.fail_pending(Some(generation), IoError::Transport);
    drop(dead);
}

struct NbdChannel {
    /// Tags of FUA writes sent as plain writes (server without `SEND_FUA`): a Flush with
    /// the same tag follows their completion, and that completes the request.
    fua_emulated: Vec<u64>,
    info: BdevInfo,
    tx: Sender<Cmd>,
    done_tx: Sender<IoCompletion>,
    done_rx: Receiver<IoCompletion>,
    in_flight: usize,
    timeout: Duration,
}

impl IoChannel for NbdChannel {
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        if self.in_flight >= self.info.max_queue_depth as usize {
            return Err(Rejected {
                io,
                reason: RejectReason::QueueFull,
            });
        }
        self.in_flight += 1;
        if let Err(e) = validate::check(&self.info, &io) {
            let _ = self.done_tx.send(IoCompletion {
                tag: io.tag,
                result: Err(e),
            });
            return Ok(());
        }
        let mut io = io;
        if let IoOp::Write { fua: true } = io.op {
            if !self.info.caps.fua {
                // validate() accepted it, so the server has flush: write, then flush.
                io.op = IoOp::Write { fua: false };
                self.fua_emulated.push(io.tag);
            }
        }
        let cmd = Cmd {
            io,
            reply: self.done_tx.clone(),
            deadline: Instant::now() + self.timeout,
        };
        if let Err(crossbeam_channel::SendError(c)) = self.tx.send(cmd) {
            complete(c, Err(IoError::Aborted));
        }
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Ok(c) = self.done_rx.try_recv() {
            if let Some(pos) = self.fua_emulated.iter().position(|t| *t == c.tag) {
                self.fua_emulated.swap_remove(pos);
                if c.result.is_ok() {
                    let cmd = Cmd {
                        io: IoRequest::new(IoOp::Flush, 0, 0, c.tag),
                        reply: self.done_tx.clone(),
                        deadline: Instant::now() + self.timeout,
                    };
                    if let Err(crossbeam_channel::SendError(c)) = self.tx.send(cmd) {
                        complete(c, Err(IoError::Aborted));
                    }
                    continue;
                }
            }
            done(c);
            n += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        n
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn wait(&mut self, timeout: Duration) {
        if self.in_flight == 0 || !self.done_rx.is_empty() {
            return;
        }
        if let Ok(c) = self.done_rx.recv_timeout(timeout) {
            // Put it back for `poll` (our own sender: cannot be disconnected).
            let _ = self.done_tx.send(c);
        }
    }
}

impl Drop for NbdChannel {
    fn drop(&mut self) {
        // Requests own their iovecs until completed; every request completes within the
        // I/O timeout (plus a sweep), so wait for them rather than leave the reader
        // thread writing into buffers the caller is about to free.
        let deadline = Instant::now() + self.timeout + Duration::from_secs(1);
        let mut left = self.in_flight;
        while left > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(wait) {
                Ok(c) => {
                    if let Some(pos) = self.fua_emulated.iter().position(|t| *t == c.tag) {
                        // Its follow-up flush is never sent: the write itself is done.
                        self.fua_emulated.swap_remove(pos);
                    }
                    left -= 1;
                }
                Err(_) => {
                    tracing::error!(left, "NBD channel dropped with requests still in flight");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_rejects_garbage_server() {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let _ = b.write_all(b"HELLO WORLD, NOT NBD!!!");
        });
        let mut s = Stream::Unix(a);
        let e = handshake(&mut s, "x").unwrap_err();
        assert!(e.to_string().contains("bad server magic"), "{e}");
    }

    #[test]
    fn handshake_reports_refused_export() {
        let (a, mut b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut m = Vec::new();
            m.extend_from_slice(&NBDMAGIC.to_be_bytes());
            m.extend_from_slice(&IHAVEOPT.to_be_bytes());
            m.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            b.write_all(&m).unwrap();
            let mut cf = [0u8; 4];
            b.read_exact(&mut cf).unwrap();
            let mut oh = [0u8; 16];
            b.read_exact(&mut oh).unwrap();
            let len = u32::from_be_bytes(oh[12..16].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            b.read_exact(&mut data).unwrap();
            let msg = b"no such export";
            let mut r = Vec::new();
            r.extend_from_slice(&REPLY_MAGIC_OPT.to_be_bytes());
            r.extend_from_slice(&OPT_GO.to_be_bytes());
            r.extend_from_slice(&0x8000_0006u32.to_be_bytes());
            r.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            r.extend_from_slice(msg);
            b.write_all(&r).unwrap();
        });
        let mut s = Stream::Unix(a);
        let e = handshake(&mut s, "nope").unwrap_err();
        assert!(e.to_string().contains("no such export"), "{e}");
    }

    #[test]
    fn connect_to_missing_server_is_a_clear_error() {
        let o = NbdOptions::new("n", NbdAddr::Unix("/nonexistent/nbd.sock".into()), "");
        let e = NbdBdev::connect(o).unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
