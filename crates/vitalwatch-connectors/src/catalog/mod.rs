//! SQLite catalog (being written).
