//! The warehouse is as open as Hive was: DuckDB and Apache Spark read the files vitalwatch
//! wrote, in place, and see exactly what vitalwatch's own SQL sees — for every table the
//! same row count, the same sums, the same first and last timestamp to the microsecond,
//! and the same partition values.
//!
//! The readers come from a venv `scripts/services.sh` installs
//! (`~/.cache/vitalwatch-services/readers`: duckdb and pyspark; Spark runs on the
//! machine's Java 17). Without it the test fails and says how to get it: nothing is
//! skipped silently.

mod common;

use std::path::Path;
use std::process::Command;

use common::{os, sql, vitalwatch};

/// Per table: the aggregate every engine computes, in each engine's dialect
/// (vitalwatch/DataFusion, DuckDB, Spark SQL): a sum over a value column and the
/// timestamp column as microseconds since the epoch. `vitals.ingested_at` is checked on
/// its own: it is the one column written delta-encoded, not with a dictionary.
const CHECKS: [(&str, &str, &str); 8] = [
    ("vitals", "value", "observed_at"),
    ("vitals", "value", "ingested_at"),
    ("alerts", "coalesce(value, 0)", "alert_generated_time"),
    ("dead_letters", "length(payload)", "received_at"),
    ("unclassified", "coalesce(value, 0)", "observed_at"),
    ("audit", "id", "at"),
    ("scores", "news2_score", "observed_at"),
    ("patients", "age", "snapshot_at"),
];

/// `micros` turns `TS` into microseconds; `q` quotes an identifier (`at` is a keyword in
/// DuckDB; Spark quotes with backticks).
fn select(table: &str, sum: &str, ts: &str, micros: &str, q: char) -> String {
    let us = micros.replace("TS", &format!("{q}{ts}{q}"));
    format!(
        "SELECT count(*) AS n, sum({sum}) AS s, min({us}) AS first_us, max({us}) AS last_us, \
         sum(hour) AS hours, count(DISTINCT date) AS days FROM {table}"
    )
}

const READER: &str = r#"
import json, sys
root, engine = sys.argv[1], sys.argv[2]
checks = json.loads(sys.argv[3])
out = []
if engine == "duckdb":
    import duckdb
    con = duckdb.connect()
    for table, query in checks:
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{root}/{table}/*/*/*.parquet', "
                    "hive_partitioning = true, hive_types = {'date': DATE, 'hour': INTEGER})")
        out.append([str(v) for v in con.execute(query).fetchone()])
else:
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[1]").appName("vitalwatch-readers")
             .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
             .getOrCreate())
    for table, query in checks:
        spark.read.parquet(f"{root}/{table}").createOrReplaceTempView(table)
        out.append([str(v) for v in spark.sql(query).collect()[0]])
    spark.stop()
print(json.dumps(out))
"#;

fn run_reader(python: &Path, root: &Path, engine: &str, micros: &str) -> serde_json::Value {
    let q = if engine == "spark" { '`' } else { '"' };
    let checks: Vec<(String, String)> = CHECKS
        .iter()
        .map(|(t, s, ts)| (t.to_string(), select(t, s, ts, micros, q)))
        .collect();
    let o = Command::new(python)
        .args(["-c", READER, &os(root), engine])
        .arg(serde_json::to_string(&checks).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{engine}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!("{engine} printed {stdout}: {e}");
    })
}

/// Numbers as numbers: sums of doubles in another order may differ in the last bits.
fn same(a: &str, b: &str) -> bool {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    }
}

#[test]
fn duckdb_and_spark_read_every_table_exactly_as_vitalwatch_does() {
    let python = dirs_services().join("readers/venv/bin/python");
    assert!(
        python.is_file(),
        "the warehouse readers (duckdb, pyspark) are not installed: run `bash scripts/services.sh`"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = os(&data);
    let o = vitalwatch(&[
        "patients",
        "import",
        "../../data/patients_information.csv",
        "--data",
        &d,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A simulated ward over two hours (two partitions), a line that is not JSON (a dead
    // letter) and a reading of a patient nobody admitted (unclassified).
    let input = dir.path().join("ward.jsonl");
    let o = vitalwatch(&[
        "simulate",
        "--patients",
        "5",
        "--rate",
        "5",
        "--duration",
        "70m",
        "--seed",
        "7",
        "--output",
        &os(&input),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("not json at all\n");
    text.push_str(
        r#"{"patient_id": "999", "observed_at": "2026-01-01T00:30:00Z", "vitals": {"heart_rate": 80}}"#,
    );
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let o = vitalwatch(&["replay", &os(&input), "--data", &d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let root = data.join("warehouse");
    let ours: Vec<Vec<String>> = CHECKS
        .iter()
        .map(|(t, s, ts)| {
            sql(&data, &select(t, s, ts, "arrow_cast(TS, 'Int64')", '"'))
                .split(',')
                .map(str::to_owned)
                .collect()
        })
        .collect();
    for (i, (table, ..)) in CHECKS.iter().enumerate() {
        assert!(
            ours[i][0].parse::<u64>().unwrap() > 0,
            "{table} has rows to compare: {:?}",
            ours[i]
        );
    }
    assert_eq!(ours[0][5], "1", "one day");
    assert!(
        ours[0][4].parse::<u64>().unwrap() > 0,
        "two hours: {:?}",
        ours[0]
    );
    for (engine, micros) in [("duckdb", "epoch_us(TS)"), ("spark", "unix_micros(TS)")] {
        let theirs = run_reader(&python, &root, engine, micros);
        for (i, (table, ..)) in CHECKS.iter().enumerate() {
            let row: Vec<String> = theirs[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(row.len(), ours[i].len(), "{engine} {table}: {row:?}");
            for (a, b) in ours[i].iter().zip(&row) {
                assert!(
                    same(a, b),
                    "{engine} reads {table} as {row:?}; vitalwatch: {:?}",
                    ours[i]
                );
            }
        }
    }
}

fn dirs_services() -> std::path::PathBuf {
    std::env::var_os("VITALWATCH_SERVICES")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/vitalwatch-services")
        })
}
