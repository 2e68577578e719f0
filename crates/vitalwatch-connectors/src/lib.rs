//! vitalwatch-connectors: every external system vitalwatch talks to, one cargo feature each.
//!
//! # Layout
//! - [`source`]: the source seam (one handle for every source, checkpoints) and the file,
//!   live-body and simulator sources.
//! - [`notify`]: the notifier seam (outbox consumers) and the alert-log notifier.
//! - [`store`]: the reference-store and alert-store traits every backend implements, and
//!   their contract test suite.
//! - [`catalog`] (feature `sqlite`): patients, versioned threshold bands, alerts and their
//!   transitions in SQLite — the reference-data role HBase played in the classic design.
//! - [`postgres`] (feature `postgres`): the same catalog in PostgreSQL, shared by
//!   replicas.
//! - [`transfer`] (feature `rdbms`): import from and export to MariaDB/MySQL and
//!   PostgreSQL — the role Sqoop played.
//! - [`warehouse`] (feature `warehouse`): Parquet in Hive layout, written by a rolling
//!   writer, queried with Apache DataFusion — the role Hive played.

#[cfg(feature = "sqlite")]
pub mod catalog;
pub mod notify;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod source;
pub mod store;
#[cfg(feature = "rdbms")]
pub mod transfer;
#[cfg(feature = "warehouse")]
pub mod warehouse;
