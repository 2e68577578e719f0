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

/// NEWS2 per patient over time, with the points of each parameter.
pub const SCORES: &str = "scores";

/// Snapshots of the catalog's patients (no personal data), one per import.
pub const PATIENTS: &str = "patients";

/// The tables the sink writes, in a stable order.
pub const TABLES: [&str; 7] = [
    VITALS,
    ALERTS,
    DEAD_LETTERS,
    UNCLASSIFIED,
    AUDIT,
    SCORES,
    PATIENTS,
];

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
        SCORES => {
            let points = |name: &str| Field::new(name, DataType::Int32, false);
            vec![
                utf8("patient_id", false),
                ts("observed_at"),
                points("news2_score"),
                utf8("response", false),
                points("resp_rate_points"),
                points("spo2_points"),
                points("oxygen_points"),
                points("systolic_points"),
                points("pulse_points"),
                points("consciousness_points"),
                points("temperature_points"),
                points("spo2_scale"),
                Field::new("assumed_air", DataType::Boolean, false),
            ]
        }
        PATIENTS => vec![
            ts("snapshot_at"),
            utf8("source", false),
            utf8("patient_id", false),
            utf8("ward", false),
            Field::new("age", DataType::Int32, false),
            Field::new("spo2_scale", DataType::Int32, false),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// What each column of a table means and its unit (empty when it has none), in schema
/// order: the source of the README's table schemas (a test keeps the two equal).
pub fn column_docs(table: &str) -> &'static [(&'static str, &'static str, &'static str)] {
    match table {
        VITALS => &[
            ("patient_id", "", "the patient (the classic `customerId`)"),
            ("device_id", "", "the bedside device that measured it"),
            (
                "vital",
                "",
                "`heart_rate`, `systolic`, `diastolic`, `spo2`, `resp_rate`, `temp_c`, `consciousness` or `on_oxygen`",
            ),
            ("value", "the vital's unit", "the reading"),
            (
                "unit",
                "",
                "UCUM unit: `/min`, `mm[Hg]`, `%`, `Cel`, `{code}` (ACVPU; on oxygen 1/0)",
            ),
            (
                "observed_at",
                "UTC",
                "when the device measured it (partitions the table)",
            ),
            ("ingested_at", "UTC", "when vitalwatch received it"),
        ],
        ALERTS => &[
            (
                "alert_id",
                "",
                "the alert (one id through its whole lifecycle)",
            ),
            (
                "event",
                "",
                "`triggered`, `renotified`, `escalated`, `acknowledged`, `inputs_stale`, `resolved`",
            ),
            (
                "state",
                "",
                "the alert's state after the event: `triggered`, `acknowledged`, `resolved`",
            ),
            (
                "rule",
                "",
                "the rule family: `threshold`, `news2`, `limit`, `device_stale`",
            ),
            (
                "rule_key",
                "",
                "the condition, e.g. `threshold:heart_rate:9` (vital and reference band), `news2`",
            ),
            (
                "priority",
                "",
                "IEC 60601-1-8 priority: `low`, `medium`, `high`",
            ),
            (
                "patient_id",
                "",
                "the patient (no name, address or phone: those stay in the catalog)",
            ),
            ("vital", "", "the vital, for threshold alerts"),
            ("value", "the vital's unit", "the value that raised it"),
            ("news2_score", "points", "the aggregate, for NEWS2 alerts"),
            (
                "ref_id",
                "",
                "the reference band's id, for threshold alerts",
            ),
            ("ref_version", "", "the threshold table's version"),
            ("alert_message", "", "the message shown and sent"),
            ("device_id", "", "the device whose reading raised it"),
            (
                "input_message_time",
                "UTC",
                "the reading's observation time",
            ),
            (
                "alert_generated_time",
                "UTC",
                "when the event happened (partitions the table)",
            ),
            ("episode_start", "UTC", "when the alert first triggered"),
        ],
        DEAD_LETTERS => &[
            (
                "received_at",
                "UTC",
                "when it arrived (partitions the table)",
            ),
            (
                "source",
                "",
                "where it came from (`http`, `replay:FILE:LINE`, `kafka:TOPIC:P:OFFSET`, …)",
            ),
            ("reason", "", "why it was refused"),
            (
                "payload",
                "",
                "the raw message (lossy UTF-8, at most 64 KiB)",
            ),
        ],
        UNCLASSIFIED => &[
            ("patient_id", "", "the patient"),
            ("device_id", "", "the device"),
            (
                "vital",
                "",
                "the vital (empty when the whole observation is of an unknown patient)",
            ),
            ("value", "the vital's unit", "the reading"),
            (
                "observed_at",
                "UTC",
                "when it was measured (partitions the table)",
            ),
            ("reason", "", "`unknown_patient` or `no_band`"),
        ],
        AUDIT => &[
            ("id", "", "the catalog's audit id (increasing)"),
            ("at", "UTC", "when it happened (partitions the table)"),
            ("actor", "", "who (user name or system)"),
            (
                "action",
                "",
                "what was done, e.g. `alert acknowledged`, `patient silenced`",
            ),
            (
                "subject",
                "",
                "what it was done to (alert id, patient id, table)",
            ),
            ("detail", "", "from where, why"),
        ],
        SCORES => &[
            ("patient_id", "", "the patient"),
            (
                "observed_at",
                "UTC",
                "the observation that completed the set (partitions the table)",
            ),
            ("news2_score", "points", "the NEWS2 aggregate, 0–20"),
            (
                "response",
                "",
                "RCP clinical response: `zero`, `low`, `low_medium`, `medium`, `high`",
            ),
            ("resp_rate_points", "points", "respiration rate, 0–3"),
            ("spo2_points", "points", "SpO2 on the patient's scale, 0–3"),
            ("oxygen_points", "points", "supplemental oxygen, 0 or 2"),
            ("systolic_points", "points", "systolic blood pressure, 0–3"),
            ("pulse_points", "points", "pulse, 0–3"),
            (
                "consciousness_points",
                "points",
                "consciousness (ACVPU), 0 or 3",
            ),
            ("temperature_points", "points", "temperature, 0–3"),
            ("spo2_scale", "", "the SpO2 scale used, 1 or 2"),
            (
                "assumed_air",
                "",
                "oxygen status was unknown and scored as room air",
            ),
        ],
        PATIENTS => &[
            (
                "snapshot_at",
                "UTC",
                "when the import that took the snapshot finished (partitions the table)",
            ),
            (
                "source",
                "",
                "what was imported (`reference import`, `import mysql://host/db`, …)",
            ),
            (
                "patient_id",
                "",
                "the patient (no name, address or phone: those stay in the catalog)",
            ),
            ("ward", "", "the ward at that time"),
            (
                "age",
                "years",
                "the age at that time (selects the threshold band)",
            ),
            ("spo2_scale", "", "the NEWS2 SpO2 scale, 1 or 2"),
        ],
        _ => &[],
    }
}

/// The column type as the README names it.
fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 => "string",
        DataType::Float64 => "double",
        DataType::Int32 => "int",
        DataType::Int64 => "bigint",
        DataType::Boolean => "boolean",
        DataType::Timestamp(..) => "timestamp (µs, UTC)",
        _ => "other",
    }
}

/// Every table's schema as Markdown (column, type, unit, meaning), plus the partition
/// columns: printed by `vitalwatch warehouse schema` and kept in the README.
pub fn schema_markdown() -> String {
    let mut out = String::new();
    for table in TABLES {
        let schema = table_schema(table).expect("every listed table has a schema");
        let docs = column_docs(table);
        out.push_str(&format!(
            "`{table}`\n\n| column | type | unit | meaning |\n|---|---|---|---|\n"
        ));
        for f in schema.fields() {
            let (unit, meaning) = docs
                .iter()
                .find(|(c, _, _)| c == f.name())
                .map_or(("", "(undocumented)"), |(_, u, m)| (*u, *m));
            let null = if f.is_nullable() { ", nullable" } else { "" };
            out.push_str(&format!(
                "| `{}` | {}{null} | {unit} | {meaning} |\n",
                f.name(),
                type_name(f.data_type())
            ));
        }
        out.push_str(
            "| `date`, `hour` | date, int | UTC | partition columns (from the folder names) |\n\n",
        );
    }
    out
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

/// The day of a `date=YYYY-MM-DD` folder name (the inverse of [`partition_dir`]'s first
/// level), or `None` for any other name.
pub(crate) fn partition_day(dir_name: &str) -> Option<chrono::NaiveDate> {
    dir_name
        .strip_prefix("date=")
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
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
    fn every_column_is_documented_in_order_and_nothing_else() {
        for table in TABLES {
            let schema = table_schema(table).unwrap();
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let documented: Vec<&str> = column_docs(table).iter().map(|(c, _, _)| *c).collect();
            assert_eq!(names, documented, "{table}");
        }
        assert!(!schema_markdown().contains("(undocumented)"));
        assert!(!schema_markdown().contains("| other"));
    }

    #[test]
    fn the_readme_lists_the_schemas_the_code_writes() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let begin = "<!-- schema:begin -->\n";
        let start = readme.find(begin).expect("README has the schema markers") + begin.len();
        let end = readme.find("<!-- schema:end -->").unwrap();
        assert!(
            readme[start..end] == schema_markdown(),
            "README's table schemas differ from the code: paste `vitalwatch warehouse schema` between the markers"
        );
    }

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
