//! Per-client interrupt eventfd table, lock-free to trigger from any thread.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustix::io::Errno;

#[derive(Debug, Default)]
struct Vector {
    fd: ArcSwapOption<OwnedFd>,
    masked: AtomicBool,
}

/// Eventfds per (irq index, vector) plus the client's mask state.
///
/// Masking policy is the device's: [`Irqs::trigger`] fires an installed eventfd whatever
/// the mask bit says (QEMU never unmasks MSI-X through SET_IRQS).
#[derive(Debug, Default)]
pub struct Irqs {
    indices: Vec<Vec<Vector>>,
}

impl Irqs {
    /// A table with `counts[i]` vectors for irq index `i`.
    pub fn new(counts: &[u32]) -> Irqs {
        Irqs {
            indices: counts
                .iter()
                .map(|&n| (0..n).map(|_| Vector::default()).collect())
                .collect(),
        }
    }

    fn vector(&self, index: u32, vector: u32) -> Result<&Vector, Errno> {
        self.indices
            .get(index as usize)
            .and_then(|v| v.get(vector as usize))
            .ok_or(Errno::INVAL)
    }

    /// Vector count of `index` (0 when absent).
    pub fn count(&self, index: u32) -> u32 {
        self.indices
            .get(index as usize)
            .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
    }

    /// Fires vector `vector` of irq `index`: writes 1 to its eventfd.
    /// `EINVAL` when out of range, `ENOENT` when no eventfd is installed.
    pub fn trigger(&self, index: u32, vector: u32) -> Result<(), Errno> {
        let v = self.vector(index, vector)?;
        let guard = v.fd.load();
        let fd = guard.as_ref().ok_or(Errno::NOENT)?;
        match rustix::io::write(fd.as_ref(), &1u64.to_ne_bytes()) {
            Ok(_) | Err(Errno::AGAIN) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether an eventfd is installed for the vector.
    pub fn has_fd(&self, index: u32, vector: u32) -> bool {
        self.vector(index, vector)
            .map(|v| v.fd.load().is_some())
            .unwrap_or(false)
    }

    /// Whether the client masked the vector through SET_IRQS.
    pub fn is_masked(&self, index: u32, vector: u32) -> bool {
        self.vector(index, vector)
            .map(|v| v.masked.load(Ordering::Acquire))
            .unwrap_or(false)
    }

    /// Installs (`Some`) or removes (`None`) a vector's eventfd. Server-side.
    pub(crate) fn set_fd(&self, index: u32, vector: u32, fd: Option<OwnedFd>) -> Result<(), Errno> {
        self.vector(index, vector)?.fd.store(fd.map(Arc::new));
        Ok(())
    }

    /// Sets the mask bit. Server-side.
    pub(crate) fn set_masked(&self, index: u32, vector: u32, masked: bool) -> Result<(), Errno> {
        self.vector(index, vector)?
            .masked
            .store(masked, Ordering::Release);
        Ok(())
    }

    /// Removes every eventfd of `index`.
    pub(crate) fn clear_index(&self, index: u32) {
        if let Some(v) = self.indices.get(index as usize) {
            for vec in v {
                vec.fd.store(None);
            }
        }
    }

    /// Removes every eventfd.
    pub(crate) fn clear_all(&self) {
        for v in self.indices.iter().flatten() {
            v.fd.store(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};

    #[test]
    fn trigger_writes_eventfd() {
        let irqs = Irqs::new(&[1, 0, 4]);
        assert_eq!(irqs.trigger(2, 1), Err(Errno::NOENT));
        assert_eq!(irqs.trigger(2, 4), Err(Errno::INVAL));
        assert_eq!(irqs.trigger(7, 0), Err(Errno::INVAL));
        let fd = eventfd(0, EventfdFlags::NONBLOCK).unwrap();
        let dup = rustix::io::dup(&fd).unwrap();
        irqs.set_fd(2, 1, Some(dup)).unwrap();
        assert!(irqs.has_fd(2, 1));
        assert!(!irqs.has_fd(2, 0));
        irqs.trigger(2, 1).unwrap();
        irqs.trigger(2, 1).unwrap();
        let mut b = [0u8; 8];
        rustix::io::read(&fd, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 2);
        irqs.set_masked(2, 1, true).unwrap();
        assert!(irqs.is_masked(2, 1));
        irqs.clear_all();
        assert!(!irqs.has_fd(2, 1));
        assert_eq!(irqs.count(2), 4);
        assert_eq!(irqs.count(9), 0);
    }
}
