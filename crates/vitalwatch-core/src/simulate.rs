//! Deterministic patient simulator (being written).
