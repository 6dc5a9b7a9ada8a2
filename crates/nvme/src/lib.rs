//! NVMe 2.0 controller emulation over an emulated PCI endpoint.
