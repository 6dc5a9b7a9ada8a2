//! Generic emulated PCI(e) endpoint on top of vfu-server: config space, capabilities, MSI-X, BARs.
