//! NVM command set: builders and synchronous helpers on [`QueuePair`].

use std::time::Duration;

use crate::cmd::{nvm, Command, Completion};
use crate::dma::DmaBuf;
use crate::error::Error;
use crate::queue::{DataPtr, QueuePair};

/// Default timeout of synchronous I/O helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Read/Write/Compare command for `nlb` blocks (1-based) at `slba`.
pub fn rw_command(opcode: u8, nsid: u32, slba: u64, nlb: u32, fua: bool) -> Result<Command, Error> {
    if nlb == 0 || nlb > 0x1_0000 {
        return Err(Error::InvalidArgument("block count must be 1..=65536"));
    }
    let mut c = Command::with_nsid(opcode, nsid);
    c.set_slba(slba);
    c.cdw[12] = (nlb - 1) | if fua { 1 << 30 } else { 0 };
    Ok(c)
}

/// Write Zeroes command (`deallocate` sets DEAC).
pub fn write_zeroes_command(
    nsid: u32,
    slba: u64,
    nlb: u32,
    deallocate: bool,
) -> Result<Command, Error> {
    let mut c = rw_command(nvm::WRITE_ZEROES, nsid, slba, nlb, false)?;
    if deallocate {
        c.cdw[12] |= 1 << 25;
    }
    Ok(c)
}

/// Data pointer for `len` bytes at offset `off` of `buf`, as PRPs or one SGL data block.
pub fn data_ptr(buf: &DmaBuf, off: u64, len: u64, sgl: bool) -> Result<DataPtr, Error> {
    let end = off
        .checked_add(len)
        .ok_or(Error::InvalidArgument("buffer range"))?;
    if end > buf.len() {
        return Err(Error::InvalidArgument("buffer too small"));
    }
    let iova = buf.iova() + off;
    Ok(if sgl {
        DataPtr::Sgl {
            iova,
            len: u32::try_from(len).map_err(|_| Error::InvalidArgument("SGL length"))?,
        }
    } else {
        DataPtr::Prp { iova, len }
    })
}

fn ok(opcode: u8, c: Completion) -> Result<Completion, Error> {
    if c.status.is_success() {
        Ok(c)
    } else {
        Err(Error::Command {
            opcode,
            status: c.status,
        })
    }
}

impl QueuePair {
    /// Runs `cmd` over the first `len` bytes of `buf` (PRPs); waits.
    fn blocks(&mut self, cmd: Command, len: u64, buf: &DmaBuf) -> Result<Completion, Error> {
        let d = data_ptr(buf, 0, len, false)?;
        self.execute(cmd, d, IO_TIMEOUT)
    }

    /// Reads `nlb` blocks of `block` bytes into `buf` (at offset 0) with PRPs; waits.
    pub fn read_blocks(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        block: u64,
        buf: &DmaBuf,
    ) -> Result<Completion, Error> {
        let c = rw_command(nvm::READ, nsid, slba, nlb, false)?;
        ok(nvm::READ, self.blocks(c, u64::from(nlb) * block, buf)?)
    }

    /// Writes `nlb` blocks from `buf` (at offset 0) with PRPs; waits.
    pub fn write_blocks(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        block: u64,
        buf: &DmaBuf,
        fua: bool,
    ) -> Result<Completion, Error> {
        let c = rw_command(nvm::WRITE, nsid, slba, nlb, fua)?;
        ok(nvm::WRITE, self.blocks(c, u64::from(nlb) * block, buf)?)
    }

    /// Flush; waits.
    pub fn flush(&mut self, nsid: u32) -> Result<Completion, Error> {
        let c = Command::with_nsid(nvm::FLUSH, nsid);
        ok(nvm::FLUSH, self.execute(c, DataPtr::None, IO_TIMEOUT)?)
    }

    /// Write Zeroes; waits.
    pub fn write_zeroes(&mut self, nsid: u32, slba: u64, nlb: u32) -> Result<Completion, Error> {
        let c = write_zeroes_command(nsid, slba, nlb, false)?;
        ok(
            nvm::WRITE_ZEROES,
            self.execute(c, DataPtr::None, IO_TIMEOUT)?,
        )
    }

    /// Dataset Management deallocate of `ranges` (`(slba, nlb)`); waits.
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<Completion, Error> {
        if ranges.is_empty() || ranges.len() > 256 {
            return Err(Error::InvalidArgument("1..=256 DSM ranges"));
        }
        let buf = self.arena().alloc(16 * ranges.len() as u64)?;
        for (i, &(slba, nlb)) in ranges.iter().enumerate() {
            let mut r = [0u8; 16];
            r[4..8].copy_from_slice(&nlb.to_le_bytes());
            r[8..16].copy_from_slice(&slba.to_le_bytes());
            buf.write_at(16 * i as u64, &r)?;
        }
        let mut c = Command::with_nsid(nvm::DSM, nsid);
        c.cdw[10] = ranges.len() as u32 - 1;
        c.cdw[11] = 1 << 2;
        let d = data_ptr(&buf, 0, 16 * ranges.len() as u64, false)?;
        ok(nvm::DSM, self.execute(c, d, IO_TIMEOUT)?)
    }

    /// Compare `nlb` blocks with `buf`; returns the completion whatever the status.
    pub fn compare(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        block: u64,
        buf: &DmaBuf,
    ) -> Result<Completion, Error> {
        let c = rw_command(nvm::COMPARE, nsid, slba, nlb, false)?;
        self.blocks(c, u64::from(nlb) * block, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_command_encodes_zero_based_count_and_fua() {
        let c = rw_command(nvm::WRITE, 1, 0x1_0000_0010, 8, true).unwrap();
        assert_eq!(c.cdw[10], 0x10);
        assert_eq!(c.cdw[11], 1);
        assert_eq!(c.cdw[12], 7 | (1 << 30));
        assert!(rw_command(nvm::READ, 1, 0, 0, false).is_err());
        assert!(rw_command(nvm::READ, 1, 0, 0x1_0001, false).is_err());
    }

    #[test]
    fn write_zeroes_deallocate_bit() {
        let c = write_zeroes_command(1, 0, 1, true).unwrap();
        assert_eq!(c.cdw[12], 1 << 25);
    }
}
