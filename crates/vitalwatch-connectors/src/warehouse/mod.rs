//! Parquet warehouse (being written).
