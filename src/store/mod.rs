//! The store thread.
