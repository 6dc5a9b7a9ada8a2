//! The poll-thread engine.
//!
//! A [`Poller`] exclusively owns its controllers. Other threads reach a controller only
//! through its [`ControllerHandle`]: register reads come from mirrored atomics, trapped
//! doorbell writes go straight into the shared doorbell page (waking a sleeping poller),
//! and everything else is a control message executed on the poll thread, whose reply
//! the caller waits for. Messages marked *quiesce* (DMA map/unmap, reset, CC writes,
//! namespace removal) stop command fetching on that controller and run only once no
//! command is in flight, so they return only after the old memory is unused.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::ctrl::{
    check_bar0_access, store_doorbell, BarError, Controller, ControllerStats, InterruptSink,
    NsError, Shared,
};
use crate::spec::reg;
use crate::GuestMem;
use sluice_bdev::Bdev;

type Job = Box<dyn FnOnce(&mut Controller) + Send>;

enum Msg {
    Attach(u64, Box<Controller>),
    Detach(u64, Sender<Option<Box<Controller>>>),
    Run { id: u64, quiesce: bool, job: Job },
    Stop,
}

struct Entry {
    id: u64,
    ctrl: Box<Controller>,
    waiting: VecDeque<Job>,
}

#[derive(Debug, Default)]
struct PollerShared {
    sleeping: AtomicBool,
    /// The thread inside [`Poller::run`], unparked by [`PollerHandle::wake`].
    thread: std::sync::OnceLock<std::thread::Thread>,
    next_id: AtomicU64,
    controllers: AtomicUsize,
}

/// How [`Poller::run`] waits when there is no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Spin forever.
    Busy,
    /// Spin while busy; after `spin_polls` idle polls, sleep with exponential backoff
    /// (1 us doubling) up to `max_sleep`; a control message or trapped doorbell wakes the
    /// thread at once, a doorbell written through the mapped page is seen at the next
    /// wake-up (so `max_sleep` is the worst added latency of the first command after an
    /// idle period). Default: 10 000 polls (~1-2 ms of spinning after the last work),
    /// `max_sleep` 2 ms; see the crate docs for the measured trade-off.
    Adaptive {
        /// Idle polls before the first sleep.
        spin_polls: u32,
        /// Longest sleep.
        max_sleep: Duration,
    },
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Adaptive {
            spin_polls: 10_000,
            max_sleep: Duration::from_millis(2),
        }
    }
}

/// The poll thread's state: owns controllers; call [`run`](Self::run) on the thread.
pub struct Poller {
    rx: Receiver<Msg>,
    entries: Vec<Entry>,
    shared: Arc<PollerShared>,
    stop: bool,
    /// Messages handled so far (a sleeping `run` tells a wake-up by message from a timeout).
    handled: u64,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("controllers", &self.entries.len())
            .finish()
    }
}

/// Cloneable handle to a [`Poller`], used to place controllers on it.
#[derive(Clone, Debug)]
pub struct PollerHandle {
    tx: Sender<Msg>,
    shared: Arc<PollerShared>,
}

/// The poll thread is gone (stopped or panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("poll thread is gone")]
pub struct PollerGone;

impl Poller {
    /// A new poller and its handle.
    pub fn new() -> (Poller, PollerHandle) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(PollerShared::default());
        (
            Poller {
                rx,
                entries: Vec::new(),
                shared: Arc::clone(&shared),
                stop: false,
                handled: 0,
            },
            PollerHandle { tx, shared },
        )
    }

    fn handle(&mut self, m: Msg) {
        self.handled = self.handled.wrapping_add(1);
        match m {
            Msg::Attach(id, ctrl) => self.entries.push(Entry {
                id,
                ctrl,
                waiting: VecDeque::new(),
            }),
            Msg::Detach(id, reply) => {
                let pos = self.entries.iter().position(|e| e.id == id);
                let ctrl = pos.map(|p| {
                    let mut e = self.entries.swap_remove(p);
                    for job in e.waiting.drain(..) {
                        job(&mut e.ctrl);
                    }
                    e.ctrl
                });
                let _ = reply.send(ctrl);
            }
            Msg::Run { id, quiesce, job } => {
                if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
                    if quiesce || !e.waiting.is_empty() {
                        e.waiting.push_back(job);
                    } else {
                        job(&mut e.ctrl);
                    }
                }
                // Unknown id: dropping the job drops its reply sender; the caller sees
                // PollerGone.
            }
            Msg::Stop => self.stop = true,
        }
    }

    /// One step: apply pending control messages, poll every controller once, run
    /// quiesce jobs whose controller has drained. Returns the work done.
    pub fn poll_once(&mut self) -> usize {
        loop {
            match self.rx.try_recv() {
                Ok(m) => self.handle(m),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if self.entries.is_empty() {
                        self.stop = true;
                    }
                    break;
                }
            }
        }
        let mut work = 0;
        for e in self.entries.iter_mut() {
            let quiescing = !e.waiting.is_empty();
            work += e.ctrl.poll_with(quiescing);
            if quiescing && e.ctrl.inflight() == 0 {
                while let Some(job) = e.waiting.pop_front() {
                    job(&mut e.ctrl);
                }
                work += 1;
            }
        }
        work
    }

    /// Whether a stop was requested (or every handle is gone and no controller is left).
    pub fn stopped(&self) -> bool {
        self.stop
    }

    /// Run until [`PollerHandle::stop`].
    pub fn run(&mut self, mode: PollMode) {
        let _ = self.shared.thread.set(std::thread::current());
        let mut idle = 0u32;
        let mut sleep = Duration::from_micros(1);
        while !self.stop {
            if self.poll_once() > 0 {
                idle = 0;
                sleep = Duration::from_micros(1);
                continue;
            }
            let PollMode::Adaptive {
                spin_polls,
                max_sleep,
            } = mode
            else {
                std::hint::spin_loop();
                continue;
            };
            idle = idle.saturating_add(1);
            if idle < spin_polls {
                std::hint::spin_loop();
                continue;
            }
            let handled = self.handled;
            self.shared.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Re-check after announcing sleep so a doorbell stored or a message sent just
            // before is seen (later ones unpark us).
            if self.poll_once() > 0 || self.handled != handled {
                self.shared.sleeping.store(false, Ordering::SeqCst);
                idle = 0;
                sleep = Duration::from_micros(1);
                continue;
            }
            // Park, not a channel receive: crossbeam's `recv_timeout` spins and yields
            // before it blocks, which cost an idle poll thread about 1.5x the CPU
            // (benches/poll_idle.rs).
            std::thread::park_timeout(sleep);
            self.shared.sleeping.store(false, Ordering::SeqCst);
            if self.poll_once() > 0 || self.handled != handled {
                idle = 0;
                sleep = Duration::from_micros(1);
            } else {
                sleep = (sleep * 2).min(max_sleep);
            }
        }
    }
}

impl PollerHandle {
    /// Place `ctrl` on this poller; returns the handle the endpoint thread uses.
    pub fn attach(&self, ctrl: Controller) -> Result<ControllerHandle, PollerGone> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(ctrl.shared());
        self.tx
            .send(Msg::Attach(id, Box::new(ctrl)))
            .map_err(|_| PollerGone)?;
        self.shared.controllers.fetch_add(1, Ordering::Relaxed);
        self.wake();
        Ok(ControllerHandle {
            id,
            shared,
            poller: self.clone(),
        })
    }

    /// Number of controllers placed on this poller (for least-loaded placement).
    pub fn controller_count(&self) -> usize {
        self.shared.controllers.load(Ordering::Relaxed)
    }

    /// Ask the poll thread to return from [`Poller::run`].
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        self.wake();
    }

    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::SeqCst) {
            if let Some(t) = self.shared.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The endpoint-thread side of one controller placed on a poller.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    id: u64,
    shared: Arc<Shared>,
    poller: PollerHandle,
}

impl ControllerHandle {
    /// Run `f` on the poll thread and wait for its result. With `quiesce`, `f` runs only
    /// after every in-flight command of this controller completed (no new command is
    /// fetched meanwhile). Never call this from the poll thread itself.
    pub fn call<R: Send + 'static>(
        &self,
        quiesce: bool,
        f: impl FnOnce(&mut Controller) -> R + Send + 'static,
    ) -> Result<R, PollerGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |c| {
            let _ = tx.send(f(c));
        });
        self.poller
            .tx
            .send(Msg::Run {
                id: self.id,
                quiesce,
                job,
            })
            .map_err(|_| PollerGone)?;
        self.poller.wake();
        rx.recv().map_err(|_| PollerGone)
    }

    /// BAR0 read, served from the register mirror.
    pub fn bar0_read(&self, off: u64, data: &mut [u8]) -> Result<(), BarError> {
        crate::ctrl::bar0_read(&self.shared, off, data)
    }

    /// BAR0 write: doorbells are stored into the shared page (waking the poller),
    /// registers are applied on the poll thread (CC writes quiesce first).
    pub fn bar0_write(&self, off: u64, data: &[u8]) -> Result<(), BarError> {
        check_bar0_access(off, data.len())?;
        if off >= reg::DOORBELL_BASE {
            store_doorbell(&self.shared, off, data);
            self.poller.wake();
            return Ok(());
        }
        let buf = data.to_vec();
        let quiesce = off <= reg::CC && off + data.len() as u64 > reg::CC;
        self.call(quiesce, move |c| c.bar0_write(off, &buf))
            .map_err(|_| BarError::OutOfRange)?
    }

    /// The doorbell page memfd (BAR0 sparse-mmap area at 0x1000, file offset 0, 4 KiB).
    pub fn doorbell_fd(&self) -> BorrowedFd<'_> {
        self.shared.doorbells.fd()
    }

    /// The register mirror.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Install a new DMA snapshot (after quiescing).
    pub fn set_memory(&self, mem: Option<Arc<GuestMem>>) -> Result<(), PollerGone> {
        self.call(true, move |c| c.set_memory(mem))
    }

    /// Function-level / device reset (after quiescing).
    pub fn reset(&self) -> Result<(), PollerGone> {
        self.call(true, Controller::function_reset)
    }

    /// Replace the interrupt sink.
    pub fn set_interrupt_sink(&self, irq: Arc<dyn InterruptSink>) -> Result<(), PollerGone> {
        self.call(false, move |c| c.set_interrupt_sink(irq))
    }

    /// Add a namespace at run time (raises the Changed Namespace List AEN).
    pub fn add_namespace(&self, nsid: Option<u32>, backend: Arc<dyn Bdev>) -> Result<u32, NsError> {
        self.call(false, move |c| c.add_namespace(nsid, backend))
            .map_err(|_| NsError::Backend("poll thread gone".into()))?
    }

    /// Remove a namespace at run time (after quiescing).
    pub fn remove_namespace(&self, nsid: u32) -> Result<Arc<dyn Bdev>, NsError> {
        self.call(true, move |c| c.remove_namespace(nsid))
            .map_err(|_| NsError::Backend("poll thread gone".into()))?
    }

    /// Counters.
    pub fn stats(&self) -> Result<ControllerStats, PollerGone> {
        self.call(false, |c| c.stats())
    }

    /// Take the controller back from the poller (other clones of this handle then fail
    /// with [`PollerGone`]).
    pub fn detach(self) -> Result<Controller, PollerGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.poller
            .tx
            .send(Msg::Detach(self.id, tx))
            .map_err(|_| PollerGone)?;
        self.poller.wake();
        let c = rx.recv().map_err(|_| PollerGone)?.ok_or(PollerGone)?;
        self.poller
            .shared
            .controllers
            .fetch_sub(1, Ordering::Relaxed);
        Ok(*c)
    }
}
