//! Shard event loops.
