//! Block device layer: null, RAM, file (io_uring), NBD backends, QoS, stats.
