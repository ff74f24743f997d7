//! Placeholder: the arbiter (file: and etcd://) is being written.
