//! Relational databases in and out: the role Sqoop played in the classic design.
//!
//! Where it sits: beside the pipeline, not in it. `vitalwatch import` reads a table or a
//! query from MariaDB/MySQL or PostgreSQL ([`Database`]) as Arrow record batches
//! ([`Database::read`]), and the binary hands them to a destination: the catalog's
//! patients (which a running engine picks up within `pipeline.reference_refresh`), a
//! warehouse table, or a CSV/Parquet file. `vitalwatch export` streams batches (a warehouse
//! query) into a database table ([`Database::export`]) in one transaction (PostgreSQL:
//! `COPY` into a staging table first), so a failed or killed export leaves the target as
//! it was.
//!
//! Rows travel as text on the wire (PostgreSQL `COPY … TO STDOUT`, the MySQL text
//! protocol) and are parsed per column by one converter ([`ColumnKind`]), so both
//! databases share one type mapping:
//!
//! | source type (PostgreSQL / MariaDB) | Arrow | written back as (PostgreSQL / MariaDB) |
//! |---|---|---|
//! | `boolean` / `BOOLEAN` (`TINYINT(1)`) | Boolean | `BOOLEAN` / `BOOLEAN` |
//! | `smallint`, `integer`, `bigint` / `TINYINT`…`BIGINT` | Int64 | `BIGINT` / `BIGINT` |
//! | `real`, `double precision` / `FLOAT`, `DOUBLE` | Float64 | `DOUBLE PRECISION` / `DOUBLE` |
//! | `numeric(p,s)` / `DECIMAL(p,s)` | Decimal128(p,s) (`numeric` without precision: (38,10)) | `NUMERIC(p,s)` / `DECIMAL(p,s)` |
//! | `text`, `varchar`, `char`, `uuid`, `json` / `CHAR`, `VARCHAR`, `TEXT`, `ENUM` | Utf8 | `TEXT` / `TEXT` (`VARCHAR(255)` for a key) |
//! | `date` / `DATE` | Date32 | `DATE` / `DATE` |
//! | `timestamp` / `DATETIME` | Timestamp(µs) | `TIMESTAMP` / `DATETIME(6)` |
//! | `timestamptz` / `TIMESTAMP` (read in UTC) | Timestamp(µs, UTC) | `TIMESTAMPTZ` / `TIMESTAMP(6)` (1970–2038) |
//! | NULL | null | NULL |
//!
//! Anything else (binary, arrays, geometry, intervals) is refused with the column's name
//! and type, before a row is read.

mod db;

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Decimal128Array,
    Decimal128Builder, Float64Array, Float64Builder, Int32Array, Int64Array, Int64Builder,
    StringArray, StringBuilder, StringViewArray, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

pub use db::{Database, Dialect, ExportMode, ExportReport, ReadStats};

/// What can go wrong moving rows between vitalwatch and a database.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The URL or an option cannot work.
    #[error("{0}")]
    Config(String),
    /// The database refused or failed (connection, SQL, a missing table).
    #[error("{0}")]
    Database(String),
    /// A source column has a type vitalwatch cannot convert.
    #[error(
        "column {column}: type {type_name} cannot be converted (supported: booleans, integers, floats, decimals, text, dates, timestamps)"
    )]
    Unsupported {
        /// The column.
        column: String,
        /// Its type in the source database.
        type_name: String,
    },
    /// A value could not be converted.
    #[error("row {row}, column {column}: {message}")]
    Value {
        /// 1-based row number in the source result.
        row: u64,
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// Building Arrow data failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
}

/// How a column's text is read into Arrow (see the module's type table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `t`/`f`, `true`/`false`, `1`/`0`.
    Bool,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float (`NaN`, `Infinity` included).
    Float,
    /// Exact decimal with precision and scale.
    Decimal(u8, i8),
    /// UTF-8 text.
    Text,
    /// Calendar date.
    Date,
    /// Date and time without zone, microseconds.
    Timestamp,
    /// An instant, read in UTC, microseconds.
    TimestampTz,
}

impl ColumnKind {
    /// The Arrow type it becomes.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnKind::Bool => DataType::Boolean,
            ColumnKind::Int => DataType::Int64,
            ColumnKind::Float => DataType::Float64,
            ColumnKind::Decimal(p, s) => DataType::Decimal128(p, s),
            ColumnKind::Text => DataType::Utf8,
            ColumnKind::Date => DataType::Date32,
            ColumnKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnKind::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }

    /// The kind an Arrow column is written back as, if it can be.
    pub fn of(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => ColumnKind::Bool,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => ColumnKind::Int,
            DataType::Float32 | DataType::Float64 => ColumnKind::Float,
            DataType::Decimal128(p, s) => ColumnKind::Decimal(*p, *s),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnKind::Text,
            DataType::Date32 => ColumnKind::Date,
            DataType::Timestamp(TimeUnit::Microsecond, None) => ColumnKind::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => ColumnKind::TimestampTz,
            _ => return None,
        })
    }

    /// The column type in `dialect` (`key`: part of the unique key, which MariaDB cannot
    /// put on `TEXT`).
    pub fn sql_type(self, dialect: Dialect, key: bool) -> String {
        let pg = dialect == Dialect::Postgres;
        match self {
            ColumnKind::Bool => "BOOLEAN".into(),
            ColumnKind::Int => "BIGINT".into(),
            ColumnKind::Float if pg => "DOUBLE PRECISION".into(),
            ColumnKind::Float => "DOUBLE".into(),
            ColumnKind::Decimal(p, s) if pg => format!("NUMERIC({p},{s})"),
            // MariaDB's DECIMAL holds at most 65 digits and 38 after the point.
            ColumnKind::Decimal(p, s) => format!("DECIMAL({},{})", p.min(65), s.clamp(0, 38)),
            ColumnKind::Text if !pg && key => "VARCHAR(255)".into(),
            ColumnKind::Text => "TEXT".into(),
            ColumnKind::Date => "DATE".into(),
            ColumnKind::Timestamp if pg => "TIMESTAMP".into(),
            ColumnKind::TimestampTz if pg => "TIMESTAMPTZ".into(),
            ColumnKind::Timestamp => "DATETIME(6)".into(),
            // Stored in UTC, read in the session's zone (UTC): an instant, not a wall
            // time. MariaDB's TIMESTAMP ends in 2038 (2106 from 11.5 on).
            ColumnKind::TimestampTz if key => "TIMESTAMP(6)".into(),
            ColumnKind::TimestampTz => "TIMESTAMP(6) NULL".into(),
        }
    }
}

/// A column of a source result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// Its name in the result.
    pub name: String,
    /// Its type in the source database, as that database names it.
    pub type_name: String,
    /// How it is read.
    pub kind: ColumnKind,
}

/// The Arrow schema of `columns`, every column nullable.
pub fn schema_of(columns: &[SourceColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.data_type(), true))
            .collect::<Vec<_>>(),
    ))
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Text(StringBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, bool),
}

/// Collects text values row by row into record batches of `columns`.
pub struct BatchBuilder {
    schema: SchemaRef,
    columns: Vec<SourceColumn>,
    builders: Vec<Builder>,
    rows: usize,
}

impl std::fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("columns", &self.columns)
            .field("rows", &self.rows)
            .finish()
    }
}

impl BatchBuilder {
    /// An empty builder for `columns`.
    pub fn new(columns: Vec<SourceColumn>) -> Self {
        let builders = columns
            .iter()
            .map(|c| match c.kind {
                ColumnKind::Bool => Builder::Bool(BooleanBuilder::new()),
                ColumnKind::Int => Builder::Int(Int64Builder::new()),
                ColumnKind::Float => Builder::Float(Float64Builder::new()),
                ColumnKind::Decimal(p, s) => Builder::Decimal(Decimal128Builder::new(), p, s),
                ColumnKind::Text => Builder::Text(StringBuilder::new()),
                ColumnKind::Date => Builder::Date(Date32Builder::new()),
                ColumnKind::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new(), false),
                ColumnKind::TimestampTz => Builder::Ts(TimestampMicrosecondBuilder::new(), true),
            })
            .collect();
        BatchBuilder {
            schema: schema_of(&columns),
            columns,
            builders,
            rows: 0,
        }
    }

    /// The schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows waiting.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row waits.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends value `i` of source row `row` (1-based, for errors): `None` is NULL.
    pub fn push(&mut self, i: usize, value: Option<&str>, row: u64) -> Result<(), TransferError> {
        let bad = |message: String| TransferError::Value {
            row,
            column: self.columns[i].name.clone(),
            message,
        };
        match (&mut self.builders[i], value) {
            (Builder::Bool(b), v) => b.append_option(v.map(parse_bool).transpose().map_err(bad)?),
            (Builder::Int(b), v) => b.append_option(
                v.map(|s| {
                    s.parse::<i64>()
                        .map_err(|_| format!("{s:?} is not a 64-bit integer"))
                })
                .transpose()
                .map_err(bad)?,
            ),
            (Builder::Float(b), v) => b.append_option(
                v.map(|s| {
                    s.parse::<f64>()
                        .map_err(|_| format!("{s:?} is not a number"))
                })
                .transpose()
                .map_err(bad)?,
            ),
            (Builder::Decimal(b, p, s), v) => b.append_option(
                v.map(|x| parse_decimal(x, *p, *s))
                    .transpose()
                    .map_err(bad)?,
            ),
            (Builder::Text(b), v) => b.append_option(v),
            (Builder::Date(b), v) => b.append_option(v.map(parse_date).transpose().map_err(bad)?),
            (Builder::Ts(b, tz), v) => b.append_option(
                v.map(|s| parse_timestamp(s, *tz))
                    .transpose()
                    .map_err(bad)?,
            ),
        }
        if i + 1 == self.builders.len() {
            self.rows += 1;
        }
        Ok(())
    }

    /// The rows so far as a batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, TransferError> {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::Int(b) => Arc::new(b.finish()),
                    Builder::Float(b) => Arc::new(b.finish()),
                    Builder::Decimal(b, p, s) => Arc::new(
                        b.finish()
                            .with_precision_and_scale(*p, *s)
                            .expect("precision and scale were checked when the column was read"),
                    ),
                    Builder::Text(b) => Arc::new(b.finish()),
                    Builder::Date(b) => Arc::new(b.finish()),
                    Builder::Ts(b, true) => Arc::new(b.finish().with_timezone("UTC")),
                    Builder::Ts(b, false) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "t" | "true" | "1" | "TRUE" | "T" => Ok(true),
        "f" | "false" | "0" | "FALSE" | "F" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean")),
    }
}

/// `-12.340` as the integer 12340 at scale 3, exactly (no float in between).
fn parse_decimal(s: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let err = || format!("{s:?} does not fit DECIMAL({precision},{scale})");
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = frac.trim_end_matches('0');
    let scale_u = usize::try_from(scale.max(0)).map_err(|_| err())?;
    if frac.len() > scale_u
        || int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    let mut v: i128 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', scale_u - frac.len()))
    {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i128::from(b - b'0')))
            .ok_or_else(err)?;
    }
    if v >= 10i128.pow(u32::from(precision)) {
        return Err(err());
    }
    Ok(if neg { -v } else { v })
}

fn parse_date(s: &str) -> Result<i32, String> {
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| format!("{s:?}: {e}"))?;
    Ok((d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32)
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]`, with a `+00`/`+00:00`/`Z` offset for instants (the
/// session's zone is UTC, so any other offset is an error rather than a guess).
fn parse_timestamp(s: &str, zoned: bool) -> Result<i64, String> {
    let mut body = s;
    if zoned {
        for suffix in ["+00:00", "+00", "Z"] {
            if let Some(b) = s.strip_suffix(suffix) {
                body = b;
                break;
            }
        }
    }
    let t = NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(body, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|e| format!("{s:?} is not a timestamp: {e}"))?;
    Ok(t.and_utc().timestamp_micros())
}

/// Value `row` of `array` as SQL text (the form both databases read back), or `None`
/// for NULL. Types [`ColumnKind::of`] accepts only.
pub fn text_value(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let any = array.as_any();
    macro_rules! get {
        ($t:ty) => {
            any.downcast_ref::<$t>()
                .expect("the array matches its data type")
                .value(row)
        };
    }
    Some(match array.data_type() {
        DataType::Boolean => get!(BooleanArray).to_string(),
        DataType::Int32 => get!(Int32Array).to_string(),
        DataType::Int64 => get!(Int64Array).to_string(),
        DataType::Float64 => {
            let v = get!(Float64Array);
            // Rust prints `inf`; both databases read `Infinity`.
            if v.is_infinite() {
                if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
            } else {
                v.to_string()
            }
        }
        DataType::Decimal128(_, _) => any
            .downcast_ref::<Decimal128Array>()
            .expect("the array matches its data type")
            .value_as_string(row),
        DataType::Utf8 => get!(StringArray).to_owned(),
        DataType::Utf8View => get!(StringViewArray).to_owned(),
        DataType::Date32 => {
            let days = get!(Date32Array);
            (NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
                + chrono::Duration::days(i64::from(days)))
            .format("%Y-%m-%d")
            .to_string()
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let us = get!(TimestampMicrosecondArray);
            chrono::DateTime::from_timestamp_micros(us)
                .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                .unwrap_or_else(|| us.to_string())
        }
        // Other types are cast to one of these before they get here.
        other => format!("{other}"),
    })
}

/// Casts the columns of `batch` that [`text_value`] does not read directly (small
/// integers, floats, other string types) to one it does.
pub fn normalise(batch: &RecordBatch) -> Result<RecordBatch, TransferError> {
    use datafusion::arrow::compute::cast;
    let mut fields = Vec::new();
    let mut arrays = Vec::new();
    for (f, a) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = match f.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(DataType::Int64),
            DataType::Float32 => Some(DataType::Float64),
            DataType::LargeUtf8 => Some(DataType::Utf8),
            _ => None,
        };
        match target {
            Some(t) => {
                arrays.push(cast(a, &t)?);
                fields.push(Field::new(f.name(), t, true));
            }
            None => {
                arrays.push(a.clone());
                fields.push(f.as_ref().clone().with_nullable(true));
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_refuse_what_does_not_fit() {
        assert_eq!(parse_decimal("-12.340", 10, 3), Ok(-12340));
        assert_eq!(parse_decimal("0.5", 3, 2), Ok(50));
        assert_eq!(parse_decimal("99999999.99", 10, 2), Ok(9_999_999_999));
        assert!(
            parse_decimal("1.234", 10, 2).is_err(),
            "a digit would be lost"
        );
        assert!(parse_decimal("1000", 3, 0).is_err(), "too many digits");
        assert!(parse_decimal("1e5", 10, 2).is_err());
    }

    #[test]
    fn timestamps_read_with_and_without_zone() {
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01.5", false),
            Ok(1_500_000)
        );
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01+00", true),
            Ok(1_000_000)
        );
        assert!(parse_timestamp("1970-01-01 00:00:01+02", true).is_err());
        assert_eq!(parse_date("1970-01-02"), Ok(1));
    }

    #[test]
    fn a_bad_value_names_its_row_and_column() {
        let mut b = BatchBuilder::new(vec![SourceColumn {
            name: "age".into(),
            type_name: "int".into(),
            kind: ColumnKind::Int,
        }]);
        b.push(0, Some("7"), 1).unwrap();
        let e = b.push(0, Some("seven"), 2).unwrap_err().to_string();
        assert_eq!(e, "row 2, column age: \"seven\" is not a 64-bit integer");
    }
}
