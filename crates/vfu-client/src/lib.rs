//! vfio-user client library: for VMMs, test tools and the perf client.
