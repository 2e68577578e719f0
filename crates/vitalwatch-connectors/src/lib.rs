//! vitalwatch-connectors: every external system vitalwatch talks to, one cargo feature each.
//!
//! # Layout
//! - [`catalog`] (feature `sqlite`): patients, versioned threshold bands, alerts and their
//!   transitions in SQLite — the reference-data role HBase played in the classic design.
//! - [`warehouse`] (feature `warehouse`): Parquet in Hive layout, written by a rolling
//!   writer, queried with Apache DataFusion — the role Hive played.

#[cfg(feature = "sqlite")]
pub mod catalog;
#[cfg(feature = "warehouse")]
pub mod warehouse;
