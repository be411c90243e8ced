//! Room index of one shard.
