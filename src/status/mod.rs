//! Placeholder: the status and metrics endpoint is being written.
