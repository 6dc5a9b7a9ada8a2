//! vfio-user server library: endpoint, session state machine, device API.
