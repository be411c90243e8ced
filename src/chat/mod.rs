//! Event rules (contract §2–§5).
