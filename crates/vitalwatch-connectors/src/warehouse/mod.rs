//! Parquet warehouse in Hive layout, and SQL over it with Apache DataFusion (the role Hive
//! played in the classic design).
//!
//! Data flow: the pipeline's archive path hands observations, alert events, dead letters
//! and unclassified readings to a [`ParquetSink`], on its own bounded channel so a slow
//! disk never delays an alarm. The sink buffers rows per table and partition, writes them
//! as zstd Parquet into one open file per `(table, date, hour)` and renames each file into
//! place when it closes. [`query`] reads the closed files back with DataFusion (the
//! `vitalwatch query` command); [`hive_ddl`] prints the tables for Hive, Spark or Trino.
//!
//! # Layout (readable by DataFusion, DuckDB and Spark alike)
//! ```text
//! <root>/<table>/date=YYYY-MM-DD/hour=H/part-<run micros>-<pid>-<seq>.parquet
//! <root>/<table>/date=YYYY-MM-DD/hour=H/.part-<...>.parquet.inprogress   (being written)
//! ```
//! - `hour` is unpadded: `hour=07` makes DuckDB infer VARCHAR.
//! - Timestamps are `Timestamp(Microsecond, "UTC")`: Spark rejects nanoseconds and shows
//!   zone-less timestamps as local time.
//! - Files become visible only when closed, so the warehouse lags the live stream by up
//!   to [`WarehouseConfig::roll_interval`]: alerts come from the stream, never from here.

mod archiver;
mod audit;
mod compact;
mod query;
pub mod recovery;
mod retain;
mod schema;
mod sink;

#[cfg(feature = "s3")]
pub mod remote;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::parquet::errors::ParquetError;

pub use archiver::AlertArchiver;
pub use audit::{AUDIT_CONSUMER, AuditCopier};
pub use compact::{Compacted, compact};
pub use query::{
    DdlEngine, OutputFormat, QueryStream, ddl, format_batches, hive_ddl, query, query_with,
    register_warehouse, write_parquet,
};
pub use retain::{Retained, retain};
pub use schema::{
    ALERTS, AUDIT, DEAD_LETTERS, PATIENTS, SCORES, TABLES, UNCLASSIFIED, VITALS, column_docs,
    partition_cols, schema_markdown, table_schema,
};
pub use sink::ParquetSink;

/// The record batches a query returns.
pub use datafusion::arrow::record_batch::RecordBatch;
/// Arrow and Parquet as the warehouse uses them (one version in the tree).
pub use datafusion::{arrow, parquet};

/// Where and how the warehouse is written.
#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseConfig {
    /// Root folder; each table is a subfolder.
    pub root: PathBuf,
    /// Rows buffered per table before they are encoded into the open files.
    pub batch_rows: usize,
    /// A file is closed (and a new one started) after this many rows.
    pub roll_rows: usize,
    /// Files open longer than this are closed (made visible) by [`ParquetSink::tick`].
    pub roll_interval: Duration,
    /// zstd compression level (1–22).
    pub zstd_level: i32,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            root: PathBuf::from("warehouse"),
            batch_rows: 8_192,
            roll_rows: 5_000_000,
            roll_interval: Duration::from_secs(60),
            zstd_level: 1,
        }
    }
}

/// What can go wrong writing or querying the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The configuration cannot work.
    #[error("invalid warehouse config: {0}")]
    Config(String),
    /// A file or directory operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `rename`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A table schema breaks a warehouse rule (e.g. a timestamp that is not UTC micros).
    #[error("schema of table {table}: {reason}")]
    Schema {
        /// Table name.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Building or formatting Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Encoding Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// Rows were lost in a file that failed mid-write (the source must re-send them).
    #[error("{0} rows were lost in a file that failed mid-write and must be re-sent")]
    Lost(u64),
    /// The catalog failed (reading the audit trail, moving a cursor).
    #[error("catalog: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Planning or running a query failed (boxed: the error type is large).
    #[error("query: {0}")]
    Query(Box<DataFusionError>),
    /// Object storage refused or failed a request.
    #[error("object storage: {0}")]
    Remote(String),
}

impl From<DataFusionError> for WarehouseError {
    fn from(e: DataFusionError) -> Self {
        WarehouseError::Query(Box::new(e))
    }
}

impl WarehouseError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WarehouseError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Counters of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Rows accepted by the sink (buffered or written).
    pub rows_accepted: u64,
    /// Rows encoded into Parquet files (open or closed).
    pub rows_written: u64,
    /// Rows in closed files (durable, not yet visible until published).
    pub rows_staged: u64,
    /// Rows in published files: visible to queries and durable on disk.
    pub rows_committed: u64,
    /// Files closed and renamed into place.
    pub files_closed: u64,
    /// Bytes in closed files.
    pub bytes_committed: u64,
}

/// Counters of a [`ParquetSink`], per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WarehouseStats {
    /// Table `vitals`.
    pub vitals: TableStats,
    /// Table `alerts`.
    pub alerts: TableStats,
    /// Table `dead_letters`.
    pub dead_letters: TableStats,
    /// Table `unclassified`.
    pub unclassified: TableStats,
    /// Table `audit`.
    pub audit: TableStats,
    /// Table `scores`.
    pub scores: TableStats,
    /// Table `patients`.
    pub patients: TableStats,
}

impl WarehouseStats {
    /// Files closed over all tables.
    pub fn files_closed(&self) -> u64 {
        self.tables().iter().map(|(_, t)| t.files_closed).sum()
    }

    /// Each table's counters with its name.
    pub fn tables(&self) -> [(&'static str, TableStats); 7] {
        [
            (VITALS, self.vitals),
            (ALERTS, self.alerts),
            (DEAD_LETTERS, self.dead_letters),
            (UNCLASSIFIED, self.unclassified),
            (AUDIT, self.audit),
            (SCORES, self.scores),
            (PATIENTS, self.patients),
        ]
    }
}
