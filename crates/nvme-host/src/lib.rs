//! Userspace NVMe host driver over a vfio-user client (tests, perf, identify).
