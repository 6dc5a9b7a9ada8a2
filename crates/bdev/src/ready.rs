//! Completions that are ready before `poll`: shared by the channels that finish a request
//! inside `submit` (null, malloc) and by the engines that queue local completions.

use std::collections::VecDeque;

use crate::{Checked, IoChannel, IoCompletion, IoError, IoRequest, RejectReason, Rejected};

/// Hands every queued completion to `done`, oldest first; returns how many.
pub(crate) fn drain(
    queue: &mut VecDeque<IoCompletion>,
    done: &mut dyn FnMut(IoCompletion),
) -> usize {
    let n = queue.len();
    for c in queue.drain(..) {
        done(c);
    }
    n
}

/// The in-flight state of a channel that executes each request in `submit` and reports it
/// on the next `poll`. No allocation per I/O (the queue is sized to the depth up front).
#[derive(Debug)]
pub(crate) struct ReadyQueue {
    done: VecDeque<IoCompletion>,
    depth: usize,
}

impl ReadyQueue {
    /// A queue holding at most `depth` completions.
    pub(crate) fn new(depth: u32) -> ReadyQueue {
        let depth = depth as usize;
        ReadyQueue {
            done: VecDeque::with_capacity(depth),
            depth,
        }
    }

    /// Rejects `io` when `depth` completions are waiting; else runs `exec` on it, releases
    /// the request (and its guest-memory keepalive) and queues the completion.
    // The request comes back by value so the queue-full path never allocates.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(
        &mut self,
        io: IoRequest,
        exec: impl FnOnce(&IoRequest) -> Result<(), IoError>,
    ) -> Result<(), Rejected> {
        if self.done.len() >= self.depth {
            return Err(Rejected {
                io,
                reason: RejectReason::QueueFull,
            });
        }
        let result = exec(&io);
        let tag = io.tag;
        drop(io);
        self.done.push_back(IoCompletion { tag, result });
        Ok(())
    }

    /// Hands every completion to `done`; returns how many.
    pub(crate) fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        drain(&mut self.done, done)
    }

    /// Completions waiting for `poll`.
    pub(crate) fn len(&self) -> usize {
        self.done.len()
    }
}

/// A channel that runs `exec` on each request inside `submit` and reports the result on the
/// next `poll`: the null and malloc bdevs. `exec`'s flag says whether the request is
/// [`Checked`] (`exec` may skip validation) or must be validated.
pub(crate) struct ImmediateChannel<F> {
    exec: F,
    ready: ReadyQueue,
}

impl<F> ImmediateChannel<F>
where
    F: Fn(&IoRequest, bool) -> Result<(), IoError> + Send,
{
    /// A channel of queue depth `depth`.
    pub(crate) fn new(depth: u32, exec: F) -> Self {
        ImmediateChannel {
            exec,
            ready: ReadyQueue::new(depth),
        }
    }
}

impl<F> IoChannel for ImmediateChannel<F>
where
    F: Fn(&IoRequest, bool) -> Result<(), IoError> + Send,
{
    fn submit(&mut self, io: IoRequest) -> Result<(), Rejected> {
        self.ready.submit(io, |io| (self.exec)(io, false))
    }

    fn submit_checked(&mut self, io: Checked) -> Result<(), Rejected> {
        self.ready
            .submit(io.into_request(), |io| (self.exec)(io, true))
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        self.ready.poll(done)
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IoOp;

    #[test]
    fn rejects_when_full_and_drains_in_order() {
        let mut q = ReadyQueue::new(2);
        q.submit(IoRequest::new(IoOp::Flush, 0, 0, 1), |_| Ok(()))
            .unwrap();
        q.submit(IoRequest::new(IoOp::Flush, 0, 0, 2), |_| {
            Err(IoError::Internal)
        })
        .unwrap();
        let mut ran = false;
        let r = q
            .submit(IoRequest::new(IoOp::Flush, 0, 0, 3), |_| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(!ran, "a rejected request is not executed");
        assert_eq!((r.io.tag, r.reason), (3, RejectReason::QueueFull));
        assert_eq!(q.len(), 2);
        let mut got = Vec::new();
        assert_eq!(q.poll(&mut |c| got.push(c)), 2);
        assert_eq!(
            got,
            [
                IoCompletion {
                    tag: 1,
                    result: Ok(())
                },
                IoCompletion {
                    tag: 2,
                    result: Err(IoError::Internal)
                }
            ]
        );
        assert_eq!(q.len(), 0);
        assert_eq!(q.poll(&mut |_| panic!("empty")), 0);
    }
}
