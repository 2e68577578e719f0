//! The warehouse tables' Arrow schemas and the Hive partition layout.
//!
//! Shared by the writer ([`super::ParquetSink`]), the query side ([`super::query`]) and the
//! DDL printer ([`super::hive_ddl`]), so the three can never disagree on a column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::WarehouseError;

/// Readings: one row per present vital of an observation.
pub const VITALS: &str = "vitals";
/// Alert lifecycle events, without personal data.
pub const ALERTS: &str = "alerts";
/// Messages that could not be decoded or validated.
pub const DEAD_LETTERS: &str = "dead_letters";
/// Readings that matched no reference band or belong to an unknown patient.
pub const UNCLASSIFIED: &str = "unclassified";

/// The catalog's audit trail (acknowledgements, silences, imports: who, when, from where).
pub const AUDIT: &str = "audit";

/// The tables the sink writes, in a stable order.
pub const TABLES: [&str; 5] = [VITALS, ALERTS, DEAD_LETTERS, UNCLASSIFIED, AUDIT];

/// Timezone of every timestamp column: readers show local time for zone-less timestamps
/// (Spark's `timestamp_ntz`), so the zone is always written.
pub(crate) const UTC: &str = "UTC";

/// Microseconds per hour: the partition granularity.
const HOUR_MICROS: i64 = 3_600_000_000;

/// `Timestamp(Microsecond, "UTC")`: Spark refuses nanosecond Parquet timestamps.
pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn ts(name: &str) -> Field {
    Field::new(name, ts_type(), false)
}

/// The schema of one of [`TABLES`] (without the partition columns), or `None`.
pub fn table_schema(table: &str) -> Option<SchemaRef> {
    let fields = match table {
        VITALS => vec![
            utf8("patient_id", false),
            utf8("device_id", false),
            utf8("vital", false),
            Field::new("value", DataType::Float64, false),
            utf8("unit", false),
            ts("observed_at"),
            ts("ingested_at"),
        ],
        // Personal data (name, address, phone) stays in the catalog: the warehouse is
        // for analytics and is typically readable by more people than the alert store.
        ALERTS => vec![
            utf8("alert_id", false),
            utf8("event", false),
            utf8("state", false),
            utf8("rule", false),
            utf8("rule_key", false),
            utf8("priority", false),
            utf8("patient_id", false),
            utf8("vital", true),
            Field::new("value", DataType::Float64, true),
            Field::new("news2_score", DataType::Int32, true),
            Field::new("ref_id", DataType::Int32, true),
            Field::new("ref_version", DataType::Int32, true),
            utf8("alert_message", false),
            utf8("device_id", true),
            ts("input_message_time"),
            ts("alert_generated_time"),
            ts("episode_start"),
        ],
        DEAD_LETTERS => vec![
            ts("received_at"),
            utf8("source", false),
            utf8("reason", false),
            utf8("payload", false),
        ],
        UNCLASSIFIED => vec![
            utf8("patient_id", false),
            utf8("device_id", false),
            utf8("vital", true),
            Field::new("value", DataType::Float64, true),
            ts("observed_at"),
            utf8("reason", false),
        ],
        AUDIT => vec![
            Field::new("id", DataType::Int64, false),
            ts("at"),
            utf8("actor", false),
            utf8("action", false),
            utf8("subject", false),
            utf8("detail", false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// The Hive partition columns, in directory order, with the types every engine infers
/// for them when `hour` is unpadded.
pub fn partition_cols() -> Vec<(String, DataType)> {
    vec![
        ("date".to_owned(), DataType::Date32),
        ("hour".to_owned(), DataType::Int32),
    ]
}

/// Refuses a schema whose timestamps are not UTC microseconds: such files would read as
/// local time, or not at all in Spark, and nothing downstream could tell.
pub(crate) fn check_schema(table: &str, schema: &Schema) -> Result<(), WarehouseError> {
    for f in schema.fields() {
        if let DataType::Timestamp(unit, tz) = f.data_type()
            && (*unit != TimeUnit::Microsecond || tz.as_deref() != Some(UTC))
        {
            return Err(WarehouseError::Schema {
                table: table.to_owned(),
                reason: format!(
                    "column {} is {}, expected Timestamp(Microsecond, \"UTC\")",
                    f.name(),
                    f.data_type()
                ),
            });
        }
    }
    Ok(())
}

/// Hours since the epoch: the partition key of an instant (floor, also before 1970).
#[inline]
pub(crate) fn hour_key(micros: i64) -> i64 {
    micros.div_euclid(HOUR_MICROS)
}

/// `<root>/<table>/date=YYYY-MM-DD/hour=H` for a partition key; `hour` unpadded because a
/// zero-padded `hour=07` makes DuckDB infer VARCHAR.
pub(crate) fn partition_dir(root: &Path, table: &str, hour_key: i64) -> PathBuf {
    let days = hour_key.div_euclid(24);
    let hour = hour_key.rem_euclid(24);
    let date = chrono::DateTime::from_timestamp(days * 86_400, 0)
        .map(|d| d.date_naive().format("%Y-%m-%d").to_string())
        // Outside chrono's range (±262,000 years): still a distinct, valid directory name.
        .unwrap_or_else(|| format!("day{days}"));
    root.join(table)
        .join(format!("date={date}"))
        .join(format!("hour={hour}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dirs_are_unpadded_and_floor_before_the_epoch() {
        let root = Path::new("/w");
        // 2026-03-02T07:59:59.999999Z
        let t = 1_772_438_399_999_999;
        assert_eq!(
            partition_dir(root, VITALS, hour_key(t)),
            Path::new("/w/vitals/date=2026-03-02/hour=7")
        );
        // One microsecond before the epoch is 1969-12-31, hour 23 — not hour 0 of 1970.
        assert_eq!(
            partition_dir(root, VITALS, hour_key(-1)),
            Path::new("/w/vitals/date=1969-12-31/hour=23")
        );
    }
}
