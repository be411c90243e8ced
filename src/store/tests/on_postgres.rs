//! The same suites again, on PostgreSQL: `Harness::start` here gives a harness over a fresh
//! database. Reads are answered on the writer, as with memory, so replies come in the same
//! order; the reader pool is exercised by the end-to-end tests under `tests/`.

pub(super) use super::*;

pub(super) struct Harness;

impl Harness {
    pub(super) fn start(queued: impl FnOnce(&World) -> Vec<StoreCommand>) -> super::Harness {
        super::Harness::start_pg(queued)
    }
}

#[path = "admin.rs"]
mod admin;
#[path = "connect.rs"]
mod connect;
#[path = "messages.rs"]
mod messages;
