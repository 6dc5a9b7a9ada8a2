//! vfio-user wire protocol: message types, validation, framing with fd passing.
