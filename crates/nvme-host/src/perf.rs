//! `sluice perf`: an spdk_nvme_perf-compatible load generator over polled queue pairs.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cmd::{nvm, Completion};
use crate::controller::{Controller, ControllerOptions, DoorbellMode};
use crate::dma::DmaBuf;
use crate::error::Error;
use crate::io::rw_command;
use crate::queue::{DataPtr, QueuePair};
use crate::trid::TransportId;

/// I/O pattern (`-w`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Workload {
    /// Sequential reads.
    #[value(name = "read")]
    Read,
    /// Sequential writes.
    #[value(name = "write")]
    Write,
    /// Random reads.
    #[value(name = "randread")]
    RandRead,
    /// Random writes.
    #[value(name = "randwrite")]
    RandWrite,
    /// Sequential mix (`-M` percent reads).
    #[value(name = "rw")]
    Rw,
    /// Random mix (`-M` percent reads).
    #[value(name = "randrw")]
    RandRw,
}

impl Workload {
    fn random(self) -> bool {
        matches!(self, Self::RandRead | Self::RandWrite | Self::RandRw)
    }

    fn read_percent(self, mix: u8) -> u8 {
        match self {
            Self::Read | Self::RandRead => 100,
            Self::Write | Self::RandWrite => 0,
            Self::Rw | Self::RandRw => mix,
        }
    }
}

/// Command line of `sluice perf` (spdk_nvme_perf spelling).
#[derive(Clone, Debug, clap::Args)]
pub struct PerfArgs {
    /// Transport id: 'trtype:VFIOUSER traddr:DIR subnqn:NQN'.
    #[arg(short = 'r', long = "transport-id")]
    pub trid: String,
    /// Queue depth per queue pair.
    #[arg(short = 'q', long = "io-depth", default_value_t = 32)]
    pub queue_depth: u32,
    /// I/O size in bytes.
    #[arg(short = 'o', long = "io-size", default_value_t = 4096)]
    pub io_size: u64,
    /// I/O pattern.
    #[arg(short = 'w', long = "io-pattern", value_enum)]
    pub workload: Workload,
    /// Percentage of reads for rw/randrw.
    #[arg(short = 'M', long = "rwmixread", default_value_t = 50)]
    pub rwmixread: u8,
    /// Run time in seconds.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Core mask (hex like 0x3, or decimal): one worker thread per core, pinned.
    #[arg(short = 'c', long = "core-mask", default_value = "0x1")]
    pub core_mask: String,
    /// Queue pairs per worker thread.
    #[arg(short = 'P', long = "num-qpairs", default_value_t = 1)]
    pub qpairs: u16,
    /// Latency tracking: -L summary, -LL summary and histogram.
    #[arg(short = 'L', long = "enable-sw-latency-tracking", action = clap::ArgAction::Count)]
    pub latency: u8,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check data: writes stamp every block, reads check the stamps.
    #[arg(long)]
    pub verify: bool,
    /// Namespace id.
    #[arg(short = 'n', long = "nsid", default_value_t = 1)]
    pub nsid: u32,
    /// Stop each worker after this many I/Os (for instruction counts).
    #[arg(long = "number-ios")]
    pub number_ios: Option<u64>,
    /// Ring doorbells with REGION_WRITE even if the doorbell page is mappable.
    #[arg(long)]
    pub trapped_doorbells: bool,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Seconds to wait after the run time (`-t`, or from the start with `--number-ios`)
    /// for outstanding I/Os before giving up on an unresponsive target (exit non-zero).
    #[arg(long = "io-timeout", default_value_t = 5)]
    pub io_timeout: u64,
}

/// Results of one worker (one core).
#[derive(Clone, Debug, Serialize)]
pub struct WorkerReport {
    /// Core id.
    pub core: usize,
    /// I/Os completed successfully.
    pub ios: u64,
    /// I/Os completed with an error status.
    pub errors: u64,
    /// Blocks whose data did not match (`--verify`).
    pub miscompares: u64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB per second.
    pub mibps: f64,
    /// Mean latency, microseconds.
    pub avg_us: f64,
    /// Minimum latency, microseconds.
    pub min_us: f64,
    /// Maximum latency, microseconds.
    pub max_us: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// I/Os given up on because the target stopped answering (the run then fails).
    #[serde(skip)]
    timed_out: u64,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

/// Results of a perf run.
#[derive(Clone, Debug, Serialize)]
pub struct PerfReport {
    /// Transport label.
    pub device: String,
    /// Namespace id.
    pub nsid: u32,
    /// Workload.
    pub workload: Workload,
    /// Queue depth.
    pub queue_depth: u32,
    /// I/O size.
    pub io_size: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// All workers together.
    pub total: WorkerReport,
}

/// Parses a core mask (`0x..` hex or decimal) into core ids.
pub fn parse_core_mask(s: &str) -> Result<Vec<usize>, Error> {
    let s = s.trim();
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if s.starts_with('[') {
        return Err(Error::InvalidArgument(
            "core lists are not supported, use a mask",
        ));
    } else {
        u64::from_str_radix(s, 16)
    }
    .map_err(|_| Error::InvalidArgument("bad core mask"))?;
    let cores: Vec<usize> = (0..64).filter(|b| v & (1u64 << b) != 0).collect();
    if cores.is_empty() {
        return Err(Error::InvalidArgument("empty core mask"));
    }
    Ok(cores)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const STAMP_MAGIC: u64 = 0x534c_5549_4345_5046;

fn stamp(buf: &DmaBuf, lba: u64, nblocks: u64, block: u64) -> Result<(), Error> {
    let mut b = vec![0u8; block as usize];
    for i in 0..nblocks {
        let l = lba + i;
        b.fill(l as u8);
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&l.to_le_bytes());
        head[8..].copy_from_slice(&STAMP_MAGIC.to_le_bytes());
        if let Some(h) = b.get_mut(0..16) {
            h.copy_from_slice(&head);
        }
        buf.write_at(i * block, &b)?;
    }
    Ok(())
}

/// Checks stamped blocks; returns the number of bad blocks (unwritten blocks are skipped).
fn check(buf: &DmaBuf, lba: u64, nblocks: u64, block: u64) -> Result<u64, Error> {
    let mut bad = 0;
    let mut b = vec![0u8; block as usize];
    for i in 0..nblocks {
        let l = lba + i;
        buf.read_at(i * block, &mut b)?;
        let mut m = [0u8; 8];
        m.copy_from_slice(b.get(8..16).unwrap_or(&[0; 8]));
        if u64::from_le_bytes(m) != STAMP_MAGIC {
            continue;
        }
        let mut lb = [0u8; 8];
        lb.copy_from_slice(b.get(0..8).unwrap_or(&[0; 8]));
        let body_ok = b.get(16..).is_none_or(|r| r.iter().all(|&x| x == l as u8));
        if u64::from_le_bytes(lb) != l || !body_ok {
            bad += 1;
        }
    }
    Ok(bad)
}

struct Job {
    nsid: u32,
    block: u64,
    nblocks: u64,
    ns_blocks: u64,
    qd: u32,
    read_pct: u8,
    random: bool,
    verify: bool,
    limit: Option<u64>,
}

struct Live {
    stop: AtomicBool,
    /// Set by the main thread when the target is gone or missed the deadline: workers
    /// give up on their outstanding I/Os.
    abort: AtomicBool,
    ios: AtomicU64,
    lat_ns: AtomicU64,
}

#[derive(Clone, Copy)]
struct Inflight {
    buf: usize,
    start: Instant,
    lba: u64,
    read: bool,
}

struct Q {
    bufs: Vec<DmaBuf>,
    free: Vec<usize>,
    inflight: Vec<Option<Inflight>>,
}

struct Worker<'a> {
    job: &'a Job,
    hist: Histogram<u64>,
    io_bytes: u64,
    span: u64,
    rng: Rng,
    seq: u64,
    ios: u64,
    errors: u64,
    miscompares: u64,
    submitted: u64,
    pending_ios: u64,
    pending_lat: u64,
    done: Vec<Completion>,
}

impl Worker<'_> {
    fn may_submit(&self, q: &Q, stopping: bool) -> bool {
        !stopping && !q.free.is_empty() && self.job.limit.is_none_or(|l| self.submitted < l)
    }

    /// Reaps completions and refills one queue pair. Never inlined, so that callgrind can
    /// count exactly the per-I/O work (`--toggle-collect=*work_pass*`), without the idle
    /// phase-bit peeks of the busy-poll loop.
    #[inline(never)]
    fn work_pass(&mut self, qp: &mut QueuePair, q: &mut Q, stopping: bool) -> Result<(), Error> {
        let job = self.job;
        self.done.clear();
        let done = &mut self.done;
        qp.poll(256, |c| done.push(c))?;
        // One clock read per pass: completions were observed before it, the submissions
        // below happen right after it.
        let now = Instant::now();
        for c in &self.done {
            let Some(inf) = q
                .inflight
                .get_mut(usize::from(c.cid))
                .and_then(Option::take)
            else {
                tracing::debug!(cid = c.cid, "completion for unknown cid");
                continue;
            };
            let ns = u64::try_from(now.duration_since(inf.start).as_nanos()).unwrap_or(u64::MAX);
            let _ = self.hist.record(ns.max(1));
            if c.status.is_success() {
                self.ios += 1;
                self.pending_ios += 1;
                self.pending_lat += ns;
                if inf.read && job.verify {
                    if let Some(buf) = q.bufs.get(inf.buf) {
                        self.miscompares += check(buf, inf.lba, job.nblocks, job.block)?;
                    }
                }
            } else {
                self.errors += 1;
                tracing::debug!(status = %c.status, lba = inf.lba, "I/O failed");
            }
            q.free.push(inf.buf);
        }
        let mut pushed = false;
        while self.may_submit(q, stopping) && qp.has_room() {
            let Some(&bi) = q.free.last() else { break };
            let lba = if job.random {
                (self.rng.next() % self.span) * job.nblocks
            } else {
                let l = self.seq;
                self.seq += job.nblocks;
                if self.seq + job.nblocks > job.ns_blocks {
                    self.seq = 0;
                }
                l
            };
            let read = match job.read_pct {
                100 => true,
                0 => false,
                p => (self.rng.next() % 100) < u64::from(p),
            };
            let buf = q
                .bufs
                .get(bi)
                .ok_or_else(|| Error::InvalidArgument("buffer"))?;
            if !read && job.verify {
                stamp(buf, lba, job.nblocks, job.block)?;
            }
            let op = if read { nvm::READ } else { nvm::WRITE };
            let cmd = rw_command(op, job.nsid, lba, job.nblocks as u32, false)?;
            let cid = qp.push(
                cmd,
                DataPtr::Prp {
                    iova: buf.iova(),
                    len: self.io_bytes,
                },
            )?;
            q.free.pop();
            if let Some(slot) = q.inflight.get_mut(usize::from(cid)) {
                *slot = Some(Inflight {
                    buf: bi,
                    start: now,
                    lba,
                    read,
                });
            }
            self.submitted += 1;
            pushed = true;
        }
        if pushed {
            qp.ring_sq()?;
        }
        Ok(())
    }
}

fn worker(
    core: usize,
    mut qps: Vec<QueuePair>,
    job: &Job,
    live: &Live,
    seed: u64,
) -> Result<(Vec<QueuePair>, WorkerReport), Error> {
    let _ = pin_to(core);
    let io_bytes = job.block * job.nblocks;
    let span = job.ns_blocks / job.nblocks;
    if span == 0 {
        return Err(Error::InvalidArgument("I/O size larger than the namespace"));
    }
    let mut w = Worker {
        job,
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|_| Error::InvalidArgument("histogram"))?,
        io_bytes,
        span,
        rng: Rng(seed | 1),
        seq: (seed % span) * job.nblocks,
        ios: 0,
        errors: 0,
        miscompares: 0,
        submitted: 0,
        pending_ios: 0,
        pending_lat: 0,
        done: Vec::with_capacity(256),
    };
    let mut timed_out = 0;
    let mut qs = Vec::new();
    for qp in &qps {
        let bufs = (0..job.qd)
            .map(|_| qp.arena().alloc(io_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        qs.push(Q {
            free: (0..bufs.len()).collect(),
            bufs,
            inflight: vec![None; usize::from(qp.depth())],
        });
    }
    loop {
        if live.abort.load(Ordering::Relaxed) {
            // Whatever is still outstanding will never complete: count it as timed out.
            let n: usize = qps.iter().map(QueuePair::outstanding).sum();
            timed_out = u64::try_from(n).unwrap_or(u64::MAX);
            break;
        }
        let stopping = live.stop.load(Ordering::Relaxed);
        let mut outstanding = 0;
        for (qp, q) in qps.iter_mut().zip(qs.iter_mut()) {
            if qp.completion_ready() || w.may_submit(q, stopping) {
                w.work_pass(qp, q, stopping)?;
            }
            outstanding += qp.outstanding();
        }
        if w.pending_ios >= 64 {
            live.ios.fetch_add(w.pending_ios, Ordering::Relaxed);
            live.lat_ns.fetch_add(w.pending_lat, Ordering::Relaxed);
            w.pending_ios = 0;
            w.pending_lat = 0;
        }
        let limit_done = job.limit.is_some_and(|l| w.submitted >= l);
        if (stopping || limit_done) && outstanding == 0 {
            break;
        }
    }
    live.ios.fetch_add(w.pending_ios, Ordering::Relaxed);
    live.lat_ns.fetch_add(w.pending_lat, Ordering::Relaxed);
    let mut r = summarize(core, w.ios, io_bytes, 1.0, Some(w.hist));
    r.timed_out = timed_out;
    r.errors = w.errors;
    r.miscompares = w.miscompares;
    Ok((qps, r))
}

fn pin_to(core: usize) -> Result<(), Error> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).map_err(std::io::Error::from)?;
    Ok(())
}

fn summarize(
    core: usize,
    ios: u64,
    io_bytes: u64,
    secs: f64,
    hist: Option<Histogram<u64>>,
) -> WorkerReport {
    let us = |ns: u64| ns as f64 / 1000.0;
    let (avg, min, max, p50, p90, p99, p999) = match &hist {
        Some(h) if !h.is_empty() => (
            h.mean() / 1000.0,
            us(h.min()),
            us(h.max()),
            us(h.value_at_quantile(0.50)),
            us(h.value_at_quantile(0.90)),
            us(h.value_at_quantile(0.99)),
            us(h.value_at_quantile(0.999)),
        ),
        _ => (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    };
    let iops = ios as f64 / secs;
    WorkerReport {
        core,
        ios,
        errors: 0,
        miscompares: 0,
        iops,
        mibps: iops * io_bytes as f64 / (1024.0 * 1024.0),
        avg_us: avg,
        min_us: min,
        max_us: max,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        p999_us: p999,
        timed_out: 0,
        hist,
    }
}

/// Runs perf against an already connected controller (the tool and tests share this).
pub fn run(c: &mut Controller, args: &PerfArgs, label: &str) -> Result<PerfReport, Error> {
    let cores = parse_core_mask(&args.core_mask)?;
    if args.queue_depth == 0 {
        return Err(Error::InvalidArgument("queue depth must be at least 1"));
    }
    if args.rwmixread > 100 {
        return Err(Error::InvalidArgument("-M must be 0..=100"));
    }
    if args.time == 0 && args.number_ios.is_none() {
        return Err(Error::InvalidArgument("-t must be at least 1 second"));
    }
    if args.qpairs == 0 {
        return Err(Error::InvalidArgument("-P must be at least 1"));
    }
    let ctrl = c.identify_controller()?;
    let ns = c.identify_namespace(args.nsid)?;
    if !ns.is_active() {
        return Err(Error::InvalidArgument("namespace is not active"));
    }
    let block = ns.block_size();
    if args.io_size == 0 || args.io_size % block != 0 {
        return Err(Error::InvalidArgument(
            "-o must be a multiple of the block size",
        ));
    }
    if let Some(m) = ctrl.max_transfer(c.cap().mpsmin()) {
        if args.io_size > m {
            return Err(Error::InvalidArgument("-o exceeds the controller's MDTS"));
        }
    }
    let nblocks = args.io_size / block;
    if nblocks > 0x1_0000 {
        return Err(Error::InvalidArgument("-o too large"));
    }
    let nq = cores.len() * usize::from(args.qpairs);
    let nq16 = u16::try_from(nq).map_err(|_| Error::InvalidArgument("too many queue pairs"))?;
    let (gs, gc) = c.set_num_queues(nq16, nq16).or_else(|_| {
        // Number of Queues may only be set once per controller enable: use what is granted.
        let dw0 = c.get_features(crate::cmd::feat::NUMBER_OF_QUEUES, 0)?;
        Ok::<_, Error>(((dw0 & 0xffff) + 1, (dw0 >> 16) + 1))
    })?;
    if (gs.min(gc) as usize) < nq {
        return Err(Error::InvalidArgument(
            "controller grants fewer queue pairs than requested",
        ));
    }
    let depth = u16::try_from((args.queue_depth + 1).min(c.cap().mqes()))
        .map_err(|_| Error::InvalidArgument("queue depth"))?;
    let qd = args.queue_depth.min(u32::from(depth) - 1);
    let mut per_core: Vec<Vec<QueuePair>> = Vec::new();
    let mut qid = 1u16;
    for _ in &cores {
        let mut v = Vec::new();
        for _ in 0..args.qpairs {
            v.push(c.create_io_queue_pair(qid, depth, None)?);
            qid += 1;
        }
        per_core.push(v);
    }
    let job = Job {
        nsid: args.nsid,
        block,
        nblocks,
        ns_blocks: ns.nsze,
        qd,
        read_pct: args.workload.read_percent(args.rwmixread),
        random: args.workload.random(),
        verify: args.verify,
        limit: args.number_ios,
    };
    let live = Live {
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        ios: AtomicU64::new(0),
        lat_ns: AtomicU64::new(0),
    };
    let progress = !args.json && !args.no_progress && std::io::stderr().is_terminal();
    let started = Instant::now();
    let ctl: &Controller = c;
    // Without completions by then, the target is considered dead.
    let deadline = Duration::from_secs(args.time.max(1).saturating_add(args.io_timeout));
    let mut lost = None;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = cores
            .iter()
            .zip(per_core)
            .enumerate()
            .map(|(i, (&core, qps))| {
                let job = &job;
                let live = &live;
                s.spawn(move || worker(core, qps, job, live, 0x9e37_79b9 ^ ((i as u64 + 1) * 7919)))
            })
            .collect();
        let bar = progress.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b
        });
        let run_for = Duration::from_secs(args.time.max(1));
        let (mut last_ios, mut last_lat, mut last_t) = (0u64, 0u64, Instant::now());
        while started.elapsed() < run_for && !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            if !ctl.is_connected() {
                lost = Some("connection to the target lost");
                break;
            }
            if let Some(b) = &bar {
                if last_t.elapsed() >= Duration::from_secs(1) {
                    let ios = live.ios.load(Ordering::Relaxed);
                    let lat = live.lat_ns.load(Ordering::Relaxed);
                    let dt = last_t.elapsed().as_secs_f64();
                    let d = ios - last_ios;
                    let iops = d as f64 / dt;
                    let avg = if d > 0 {
                        (lat - last_lat) as f64 / d as f64 / 1000.0
                    } else {
                        0.0
                    };
                    b.set_message(format!(
                        "[{:>4}s] {:>12.2} IOPS {:>10.2} MiB/s {:>10.2} us avg",
                        started.elapsed().as_secs(),
                        iops,
                        iops * args.io_size as f64 / 1048576.0,
                        avg
                    ));
                    b.tick();
                    (last_ios, last_lat, last_t) = (ios, lat, Instant::now());
                }
            }
        }
        live.stop.store(true, Ordering::Relaxed);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        // Drain: wait for the workers' outstanding I/Os, bounded by the deadline, checking
        // every 100 ms that the target is still connected.
        let mut tick = 0u32;
        while lost.is_none() && !handles.iter().all(|h| h.is_finished()) {
            if started.elapsed() >= deadline {
                lost = Some("no completions before the deadline (-t plus --io-timeout)");
            } else if tick % 20 == 0 && !ctl.is_connected() {
                lost = Some("connection to the target lost");
            }
            tick = tick.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        if lost.is_some() {
            live.abort.store(true, Ordering::Relaxed);
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::InvalidArgument("worker thread panicked"))?
            })
            .collect::<Result<Vec<_>, Error>>()
    });
    let secs = started.elapsed().as_secs_f64();
    if let Some(reason) = lost {
        // A worker may also have failed on its own (a trapped doorbell write to a dead
        // socket); the main thread's reason is the clearer one.
        let timed_out = results
            .as_ref()
            .map(|r| r.iter().map(|(_, w)| w.timed_out).sum())
            .unwrap_or(0);
        return Err(Error::IoTimeout { reason, timed_out });
    }
    let results = results?;
    let mut workers = Vec::new();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|_| Error::InvalidArgument("histogram"))?;
    let (mut ios, mut errors, mut mis) = (0, 0, 0);
    for (qps, w) in results {
        for qp in qps {
            c.delete_io_queue_pair(qp)?;
        }
        if let Some(h) = &w.hist {
            let _ = all.add(h);
        }
        ios += w.ios;
        errors += w.errors;
        mis += w.miscompares;
        let mut w2 = summarize(w.core, w.ios, args.io_size, secs, w.hist);
        w2.errors = w.errors;
        w2.miscompares = w.miscompares;
        workers.push(w2);
    }
    let mut total = summarize(0, ios, args.io_size, secs, Some(all));
    total.errors = errors;
    total.miscompares = mis;
    Ok(PerfReport {
        device: label.to_string(),
        nsid: args.nsid,
        workload: args.workload,
        queue_depth: args.queue_depth,
        io_size: args.io_size,
        seconds: secs,
        workers,
        total,
    })
}

impl PerfReport {
    /// Renders the final table in spdk_nvme_perf's layout.
    pub fn render(&self, latency: u8) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let names: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{} NSID {} from core {:2}", self.device, self.nsid, w.core))
            .collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(40);
        let line = "=".repeat(56);
        let _ = writeln!(o, "{line}");
        let _ = writeln!(o, "{:>w$}", "Latency(us)", w = width + 35);
        let _ = writeln!(
            o,
            "{:<width$}: {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Device Information", "IOPS", "MiB/s", "Average", "min", "max"
        );
        let row = |o: &mut String, name: &str, w: &WorkerReport| {
            let _ = writeln!(
                o,
                "{:<width$}: {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                name, w.iops, w.mibps, w.avg_us, w.min_us, w.max_us
            );
        };
        for (n, w) in names.iter().zip(&self.workers) {
            row(&mut o, n, w);
        }
        let _ = writeln!(o, "{line}");
        row(&mut o, "Total", &self.total);
        let t = &self.total;
        let _ = writeln!(
            o,
            "\nLatency percentiles (us): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            t.p50_us, t.p90_us, t.p99_us, t.p999_us, t.max_us
        );
        if t.errors > 0 || t.miscompares > 0 {
            let _ = writeln!(o, "Errors: {}  Miscompares: {}", t.errors, t.miscompares);
        }
        if latency >= 1 {
            for (n, w) in names.iter().zip(&self.workers) {
                let Some(h) = &w.hist else { continue };
                let _ = writeln!(o, "\nSummary latency data for {n}:");
                let _ = writeln!(o, "{}", "=".repeat(81));
                for p in [
                    1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.99, 99.999,
                ] {
                    let v = h.value_at_quantile(p / 100.0) as f64 / 1000.0;
                    let _ = writeln!(o, "{:>10.5}% : {:>10.3}us", p, v);
                }
                if latency >= 2 {
                    let _ = writeln!(o, "\nLatency histogram for {n}:");
                    let _ = writeln!(o, "{}", "=".repeat(78));
                    let _ = writeln!(o, "       Range in us     Cumulative    IO count");
                    let total = h.len().max(1) as f64;
                    let mut cum = 0u64;
                    let mut prev = 0.0;
                    for v in h.iter_log(1000, 1.25) {
                        let n = v.count_since_last_iteration();
                        let hi = v.value_iterated_to() as f64 / 1000.0;
                        if n > 0 {
                            cum += n;
                            let _ = writeln!(
                                o,
                                "{:>10.3} - {:>10.3}: {:>9.4}%  ({:>9})",
                                prev,
                                hi,
                                cum as f64 * 100.0 / total,
                                n
                            );
                        }
                        prev = hi;
                    }
                }
            }
        }
        o
    }
}

/// Entry point of `sluice perf`: connects, runs, prints the table (or JSON) on stdout.
pub fn perf_main(args: PerfArgs) -> Result<PerfReport, Error> {
    let trid = TransportId::parse(&args.trid)?;
    let opts = ControllerOptions {
        dma_size: 256 << 20,
        doorbells: if args.trapped_doorbells {
            DoorbellMode::Trapped
        } else {
            DoorbellMode::Auto
        },
        ..ControllerOptions::default()
    };
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(out, "Initializing NVMe Controllers")?;
    }
    let mut c = Controller::connect(&trid.socket_path(), opts)?;
    if !args.json {
        let subnqn = c.identify_controller()?.subnqn;
        writeln!(
            out,
            "Attached to NVMe over vfio-user controller at {}: {}",
            trid.traddr.display(),
            subnqn
        )?;
        for (i, core) in parse_core_mask(&args.core_mask)?.iter().enumerate() {
            let _ = i;
            writeln!(
                out,
                "Associating {} NSID {} with lcore {}",
                trid.label(),
                args.nsid,
                core
            )?;
        }
        writeln!(out, "Initialization complete. Launching workers.")?;
        out.flush()?;
    }
    let report = run(&mut c, &args, &trid.label())?;
    let _ = c.shutdown(false);
    if args.json {
        let s = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        writeln!(out, "{s}")?;
    } else {
        out.write_all(report.render(args.latency).as_bytes())?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        perf: PerfArgs,
    }

    #[test]
    fn parses_spdk_option_spelling() {
        let cli = Cli::parse_from([
            "perf",
            "-r",
            "trtype:VFIOUSER traddr:/tmp/x",
            "-q",
            "32",
            "-o",
            "4096",
            "-w",
            "randread",
            "-t",
            "5",
            "-c",
            "0x3",
            "-LL",
            "--json",
            "-M",
            "70",
        ]);
        let a = cli.perf;
        assert_eq!(a.queue_depth, 32);
        assert_eq!(a.workload, Workload::RandRead);
        assert_eq!(a.latency, 2);
        assert!(a.json);
        assert_eq!(a.rwmixread, 70);
        assert_eq!(parse_core_mask(&a.core_mask).unwrap(), vec![0, 1]);
        assert!(Cli::try_parse_from(["perf", "-r", "x", "-w", "bogus"]).is_err());
    }

    #[test]
    fn core_mask_parsing() {
        assert_eq!(parse_core_mask("0x5").unwrap(), vec![0, 2]);
        assert_eq!(parse_core_mask("2").unwrap(), vec![1]);
        assert!(parse_core_mask("0x0").is_err());
        assert!(parse_core_mask("zz").is_err());
        assert!(parse_core_mask("[0,1]").is_err());
    }

    #[test]
    fn workload_read_percentages() {
        assert_eq!(Workload::RandRead.read_percent(10), 100);
        assert_eq!(Workload::Write.read_percent(10), 0);
        assert_eq!(Workload::RandRw.read_percent(70), 70);
        assert!(Workload::RandRw.random());
        assert!(!Workload::Rw.random());
    }

    #[test]
    fn unreachable_socket_and_bad_trid_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = Cli::parse_from([
            "perf",
            "-r",
            "trtype:PCIE traddr:x",
            "-w",
            "read",
            "--no-progress",
        ])
        .perf;
        assert!(matches!(
            perf_main(args.clone()),
            Err(Error::InvalidTransportId(_))
        ));
        args.trid = format!("trtype:VFIOUSER traddr:{}", dir.path().display());
        assert!(matches!(perf_main(args), Err(Error::Transport(_))));
    }

    #[test]
    fn table_layout_has_spdk_columns() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in [10_000u64, 20_000, 30_000] {
            h.record(v).unwrap();
        }
        let w = summarize(0, 300, 4096, 1.0, Some(h.clone()));
        let r = PerfReport {
            device: "VFIOUSER (/tmp/x)".into(),
            nsid: 1,
            workload: Workload::RandRead,
            queue_depth: 1,
            io_size: 4096,
            seconds: 1.0,
            workers: vec![w.clone()],
            total: w,
        };
        let s = r.render(2);
        assert!(s.contains("Device Information"));
        let row = s
            .lines()
            .find(|l| l.starts_with("VFIOUSER (/tmp/x) NSID 1 from core  0"))
            .unwrap();
        assert!(row.contains(":     300.00       1.17      20.0"), "{row:?}");
        assert!(s.contains("Total"));
        assert!(s.contains("Summary latency data for"));
        assert!(s.contains(" 50.00000% :"));
        assert!(s.contains("Latency histogram for"));
    }

    #[test]
    fn stamps_round_trip_and_detect_corruption() {
        let arena = crate::dma::DmaArena::new(0x10_0000, 1 << 16).unwrap();
        let buf = arena.alloc(4096).unwrap();
        stamp(&buf, 42, 8, 512).unwrap();
        assert_eq!(check(&buf, 42, 8, 512).unwrap(), 0);
        assert_eq!(check(&buf, 43, 8, 512).unwrap(), 8);
        buf.write_at(512 + 100, &[0xee]).unwrap();
        assert_eq!(check(&buf, 42, 8, 512).unwrap(), 1);
        buf.fill(0).unwrap();
        assert_eq!(
            check(&buf, 42, 8, 512).unwrap(),
            0,
            "unwritten blocks are skipped"
        );
    }
}
