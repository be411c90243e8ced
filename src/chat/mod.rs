//! Event rules (contract §2–§5): who a socket is, and what its events may carry.

pub mod auth;
pub mod validate;
