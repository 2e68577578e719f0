//! `vitalwatch import`, `export` and `transfer job` against the real servers on this
//! machine: MariaDB (127.0.0.1:3306, or `VITALWATCH_MARIADB` as a `mariadb` client
//! `--host`/`--port`/`--user` line) and PostgreSQL (127.0.0.1:5432, or
//! `VITALWATCH_POSTGRES`). Each test makes databases of its own and drops them.
//!
//! What it shows: the classic `patients_information` table imported from MariaDB reaches
//! a running engine, and an age changed in MariaDB moves the patient to another band after
//! an incremental `lastmodified` job run; `append` jobs import only new rows; every type
//! of the mapping table survives PostgreSQL → Parquet → MariaDB → Parquet → PostgreSQL;
//! upsert re-exports leave no duplicate; an export that fails or is killed leaves the
//! target as it was; bad input is one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, http, os, spawn_run, sql, vitalwatch, wait_for};
use vitalwatch_connectors::postgres::ScratchDatabase;

/// A MariaDB database of its own, dropped at the end.
struct MariaScratch {
    name: String,
}

fn mariadb(sql: &str) -> String {
    let o = Command::new("mariadb")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
            "--batch",
            "-e",
            sql,
        ])
        .output()
        .expect("the mariadb client (MariaDB runs on this machine: see ../shared/services.md)");
    assert!(
        o.status.success(),
        "mariadb {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

impl MariaScratch {
    fn new(tag: &str) -> Self {
        let name = format!("vw_{tag}_{}", std::process::id());
        mariadb(&format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        ));
        MariaScratch { name }
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:3306/{}", self.name)
    }

    fn run(&self, sql: &str) -> String {
        mariadb(&format!("USE {}; {sql}", self.name))
    }
}

impl Drop for MariaScratch {
    fn drop(&mut self) {
        let _ = Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-u", "root", "-e"])
            .arg(format!("DROP DATABASE IF EXISTS {}", self.name))
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs vitalwatch with `--data`; asserts success; standard output and error.
fn vw(data: &Path, args: &[&str]) -> (String, String) {
    let mut a = args.to_vec();
    let d = os(data);
    // Before a `--` (a job's command line follows it).
    let at = a.iter().position(|x| *x == "--").unwrap_or(a.len());
    a.splice(at..at, ["--data", d.as_str()]);
    let o = vitalwatch(&a);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

/// Runs vitalwatch and expects it to fail; its standard error.
fn vw_fails(data: &Path, args: &[&str]) -> String {
    let mut a = args.to_vec();
    let d = os(data);
    a.extend(["--data", &d]);
    let o = vitalwatch(&a);
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8(o.stderr).unwrap()
}

/// The classic table in MariaDB, as the classic design's MySQL held it, plus the
/// `updated_at` column a lastmodified import checks.
fn classic_patients(db: &MariaScratch) {
    let csv = std::fs::canonicalize("../../data/patients_information.csv").unwrap();
    db.run(&format!(
        "CREATE TABLE patients_information (patientid INT PRIMARY KEY, patientname VARCHAR(100),
           patientaddress VARCHAR(200), phone_number VARCHAR(20), admitted_ward INT, age INT,
           updated_at DATETIME(6) NOT NULL DEFAULT '2026-01-01 00:00:00');
         LOAD DATA LOCAL INFILE '{}' INTO TABLE patients_information FIELDS TERMINATED BY ','
           IGNORE 1 LINES (patientid, patientname, patientaddress, phone_number, admitted_ward, age)",
        csv.display()
    ));
}

#[test]
fn classic_patients_from_mariadb_reach_a_running_engine_and_an_age_change_moves_their_band() {
    let maria = MariaScratch::new("classic");
    classic_patients(&maria);
    let catalog = ScratchDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vw.toml");
    std::fs::write(
        &config,
        format!(
            "catalog = \"{}\"\n[rules]\nprofile = \"classic\"\n[alerts]\nconsole = false\n[[sources]]\ntype = \"http\"\n",
            catalog.url
        ),
    )
    .unwrap();
    let c = os(&config);
    // The running pipeline has a data directory of its own; imports run from another.
    let running = dir.path().join("running");
    let imports = dir.path().join("imports");
    vw(
        &imports,
        &[
            "thresholds",
            "import",
            "../../data/threshold_ref.csv",
            "--config",
            &c,
        ],
    );
    let url = maria.url();
    vw(
        &imports,
        &[
            "transfer",
            "job",
            "create",
            "patients",
            "--config",
            &c,
            "--",
            "import",
            "--connect",
            &url,
            "--table",
            "patients_information",
            "--to",
            "catalog:patients",
            "--incremental",
            "lastmodified",
            "--check-column",
            "updated_at",
            "--merge-key",
            "patientid",
        ],
    );
    let (_, said) = vw(
        &imports,
        &["transfer", "job", "run", "patients", "--config", &c],
    );
    assert!(
        said.contains("catalog:patients: 5 added, 0 updated"),
        "{said}"
    );
    let (listed, _) = vw(
        &imports,
        &["patients", "list", "--format", "csv", "--config", &c],
    );
    assert!(
        listed.contains("1,Alex S,23,1,8982739282,XDC test Address"),
        "{listed}"
    );

    let port = free_port();
    let mut run = spawn_run(&running, Some(&config), port);
    let alerts = || {
        let (status, body) = http(port, "GET", "/v1/alerts", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
    };
    // Heart rate 75 at 23 is normal (band 2: 70–78)...
    common::post_reading(port, "1", r#"{"heart_rate": 75}"#);
    std::thread::sleep(Duration::from_secs(1));
    assert!(alerts().is_empty(), "{:?}", alerts());

    // ...the hospital system corrects the age to 60 (and touches updated_at); the job
    // imports that one change...
    maria.run("UPDATE patients_information SET age = 60, updated_at = '2026-06-01 10:00:00.5' WHERE patientid = 1");
    let (_, said) = vw(
        &imports,
        &["transfer", "job", "run", "patients", "--config", &c],
    );
    assert!(said.contains("0 added, 1 updated, 0 unchanged"), "{said}");
    assert!(said.contains("updated patient 1: age"), "{said}");
    let (job, _) = vw(
        &imports,
        &["transfer", "job", "show", "patients", "--config", &c],
    );
    assert!(
        job.contains("\"last_value\": \"2026-06-01 10:00:00.500000\""),
        "{job}"
    );

    // ...and the running engine applies it: 75 at 60 is band 9, "Higher Heart Rate".
    std::thread::sleep(Duration::from_secs(3));
    common::post_reading(port, "1", r#"{"heart_rate": 75}"#);
    wait_for("the alert in the new band", Duration::from_secs(10), || {
        !alerts().is_empty()
    });
    let a = alerts().remove(0);
    assert_eq!(a["alert_message"], "Higher Heart Rate than Normal", "{a}");
    assert_eq!(a["ref_id"], 9, "{a}");
    assert_eq!(a["age"], 60, "{a}");
    run.kill().unwrap();
    run.wait().unwrap();

    // A run with nothing new imports nothing and keeps its place.
    let (_, said) = vw(
        &imports,
        &["transfer", "job", "run", "patients", "--config", &c],
    );
    assert!(
        said.contains("imported 0 rows") || said.contains("nothing to import"),
        "{said}"
    );
    // Every change is in the audit trail, named by the import.
    let (trail, _) = vw(
        &imports,
        &["audit", "list", "--format", "csv", "--config", &c],
    );
    assert!(
        trail.lines().any(|l| l.contains("patient updated,1,age")
            && l.contains(&format!("import {url} table patients_information"))),
        "{trail}"
    );
}

#[test]
fn an_append_job_imports_only_new_rows_and_remembers_where_it_got_to() {
    let pg = ScratchDatabase::new();
    psql(
        &pg.url,
        "CREATE TABLE readings_src (id BIGSERIAL PRIMARY KEY, patient TEXT NOT NULL, hr INT);
         INSERT INTO readings_src (patient, hr) VALUES ('1', 80), ('2', 90), ('3', NULL)",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    vw(
        &data,
        &[
            "transfer",
            "job",
            "create",
            "hr",
            "--",
            "import",
            "--connect",
            &pg.url,
            "--query",
            "SELECT id, patient, hr FROM readings_src",
            "--to",
            "warehouse:readings_src",
            "--incremental",
            "append",
            "--check-column",
            "id",
        ],
    );
    let (_, said) = vw(&data, &["transfer", "job", "run", "hr"]);
    assert!(
        said.contains("imported 3 rows") && said.contains("last value 3"),
        "{said}"
    );
    psql(
        &pg.url,
        "INSERT INTO readings_src (patient, hr) VALUES ('4', 100), ('5', 110)",
    );
    let (_, said) = vw(&data, &["transfer", "job", "run", "hr"]);
    assert!(
        said.contains("imported 2 rows") && said.contains("last value 5"),
        "{said}"
    );
    let (_, said) = vw(&data, &["transfer", "job", "run", "hr"]);
    assert!(said.contains("nothing to import"), "{said}");
    // The same range imported again (as after a crash before the job saved its last
    // value) replaces its file: no row twice.
    let again = [
        "import",
        "--connect",
        &pg.url,
        "--query",
        "SELECT id, patient, hr FROM readings_src",
        "--to",
        "warehouse:readings_src",
        "--incremental",
        "append",
        "--check-column",
        "id",
        "--last-value",
        "3",
    ];
    vw(&data, &again);
    vw(&data, &again);
    assert_eq!(
        sql(
            &data,
            "SELECT count(*), count(DISTINCT id), sum(hr), count(hr) FROM readings_src"
        ),
        "5,5,380,4"
    );
    let (list, _) = vw(&data, &["transfer", "job", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("hr ") && l.contains(" 5 ")),
        "{list}"
    );
    vw(&data, &["transfer", "job", "delete", "hr"]);
    assert!(vw_fails(&data, &["transfer", "job", "run", "hr"]).contains("no job hr"));
}

/// Every row of the type table, both ways: PostgreSQL → warehouse → MariaDB → warehouse
/// → PostgreSQL, and the values are the same at each step.
#[test]
fn every_type_round_trips_between_postgres_mariadb_and_parquet() {
    let pg = ScratchDatabase::new();
    let maria = MariaScratch::new("types");
    psql(
        &pg.url,
        "CREATE TABLE typed (id INT PRIMARY KEY, b BOOLEAN, s SMALLINT, i INTEGER, big BIGINT,
           r REAL, d DOUBLE PRECISION, n NUMERIC(12,3), t TEXT, v VARCHAR(20), c CHAR(3),
           day DATE, ts TIMESTAMP, tz TIMESTAMPTZ);
         INSERT INTO typed VALUES
           (1, true, -32768, 2147483647, -9223372036854775808, 1.5, 36.6, -12345.678,
            'tab\there, \"quoted\" ''single'' back\\slash', 'héllo wörld', 'abc',
            '1999-12-31', '2026-02-03 04:05:06.123456', '2026-02-03 04:05:06.654321+02'),
           (2, false, 0, 0, 0, -0.25, 1e-7, 0.001, '', '', '', '1970-01-01',
            '1970-01-01 00:00:00', '1970-01-01 00:00:01+00'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cols = "id,b,s,i,big,r,d,n,t,v,c,day,ts,tz";
    let select = format!("SELECT {cols} FROM %T ORDER BY id");
    let show = |table: &str| sql(&data, &select.replace("%T", table));

    vw(
        &data,
        &[
            "import",
            "--connect",
            &pg.url,
            "--table",
            "typed",
            "--to",
            "warehouse:from_pg",
        ],
    );
    let first = show("from_pg");
    assert_eq!(
        first.lines().next().unwrap(),
        "1,true,-32768,2147483647,-9223372036854775808,1.5,36.6,-12345.678,\"tab\there, \"\"quoted\"\" 'single' back\\slash\",héllo wörld,abc,1999-12-31,2026-02-03T04:05:06.123456,2026-02-03T02:05:06.654321Z"
    );
    assert_eq!(first.lines().nth(2).unwrap(), "3,,,,,,,,,,,,,");

    let url = maria.url();
    vw(
        &data,
        &[
            "export",
            "--from",
            "warehouse:from_pg",
            "--columns",
            cols,
            "--connect",
            &url,
            "--table",
            "typed",
            "--create-table",
            "--mode",
            "upsert",
            "--key",
            "id",
        ],
    );
    vw(
        &data,
        &[
            "import",
            "--connect",
            &url,
            "--table",
            "typed",
            "--to",
            "warehouse:from_maria",
        ],
    );
    assert_eq!(show("from_maria"), first);

    vw(
        &data,
        &[
            "export",
            "--from",
            "warehouse:from_maria",
            "--columns",
            cols,
            "--connect",
            &pg.url,
            "--table",
            "typed_back",
            "--create-table",
        ],
    );
    vw(
        &data,
        &[
            "import",
            "--connect",
            &pg.url,
            "--table",
            "typed_back",
            "--to",
            "warehouse:back_in_pg",
        ],
    );
    assert_eq!(show("back_in_pg"), first);
    // What the databases hold, seen with their own clients.
    assert_eq!(
        psql(&pg.url, "SELECT n, tz FROM typed_back WHERE id = 1").trim(),
        "-12345.678|2026-02-03 02:05:06.654321+00"
    );
    assert_eq!(
        maria
            .run("SELECT n, ts FROM typed WHERE id = 1")
            .lines()
            .nth(1)
            .unwrap(),
        "-12345.678\t2026-02-03 04:05:06.123456"
    );
    // Files: the same rows as CSV and Parquet.
    let csv = dir.path().join("typed.csv");
    vw(
        &data,
        &[
            "import",
            "--connect",
            &url,
            "--table",
            "typed",
            "--to",
            &os(&csv),
        ],
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("id,b,s,i,big,r,d,n,t,v,c,day,ts,tz\n1,true,-32768,"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "a header and 3 rows: {text}");
}

#[test]
fn upsert_re_exports_leave_no_duplicate_and_a_failed_or_killed_export_changes_nothing() {
    let pg = ScratchDatabase::new();
    let maria = MariaScratch::new("export");
    // A million rows: enough that an export is still running when it is killed.
    psql(
        &pg.url,
        "CREATE TABLE big AS SELECT g AS id, 'patient ' || (g % 1000) AS patient,
           60 + g % 50 AS hr, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' AS at
         FROM generate_series(1, 1000000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    vw(
        &data,
        &[
            "import",
            "--connect",
            &pg.url,
            "--table",
            "big",
            "--to",
            "warehouse:big",
        ],
    );
    let cols = "id,patient,hr,at";
    let url = maria.url();
    for target in [&url, &pg.url] {
        let export = |mode: &str, extra: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = [
                "export",
                "--from",
                "warehouse:big",
                "--columns",
                cols,
                "--connect",
                target,
                "--table",
                "big_out",
                "--mode",
                mode,
                "--key",
                "id",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            a.extend(extra.iter().map(|x| x.to_string()));
            a
        };

        let run = |a: Vec<String>| vw(&data, &a.iter().map(String::as_str).collect::<Vec<_>>());
        run(export(
            "upsert",
            &["--create-table", "--where", "id <= 1000"],
        ));
        // Again, overlapping, with changed values: still one row per key.
        run(export("upsert", &["--where", "id <= 2000"]));
        let count = || match target.starts_with("mysql") {
            true => maria
                .run("SELECT count(*), count(DISTINCT id) FROM big_out")
                .lines()
                .nth(1)
                .unwrap()
                .replace('\t', "|"),
            false => psql(target, "SELECT count(*), count(DISTINCT id) FROM big_out")
                .trim()
                .to_owned(),
        };
        assert_eq!(count(), "2000|2000", "{target}");

        // Insert mode over keys that exist: the final statement fails and the staged rows
        // go nowhere.
        let a = export("insert", &["--where", "id > 1500 AND id <= 2500"]);
        let e = vw_fails(&data, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            e.contains("the table is as it was") && e.to_lowercase().contains("duplicate"),
            "{e}"
        );
        assert_eq!(count(), "2000|2000", "{target}");

        // Killed while streaming all million rows: nothing of it reaches the table.
        let mut args = export("upsert", &[]);
        args.extend(["--data".to_owned(), os(&data)]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
            .args(&args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the export ended before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(count(), "2000|2000", "{target}");
    }
}

#[test]
fn bad_input_is_one_clear_line_and_writes_nothing() {
    let pg = ScratchDatabase::new();
    psql(
        &pg.url,
        "CREATE TABLE blobs (id INT, payload BYTEA); CREATE TABLE people (name TEXT, age TEXT);
         INSERT INTO people VALUES ('x', 'forty')",
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let with_password = pg.url.replace("postgres@", "postgres:secret@");
    let pw = os(&pw);
    // (connection, source table or query, destination, more options, what stderr says)
    let cases: [(&str, &str, &str, &[&str], &str); 7] = [
        (
            &with_password,
            "people",
            "x.csv",
            &[],
            "the connection URL holds a password",
        ),
        (
            &pg.url,
            "nope",
            "x.csv",
            &[],
            "relation \"nope\" does not exist",
        ),
        (
            &pg.url,
            "blobs",
            "x.csv",
            &[],
            "column payload: type bytea cannot be converted",
        ),
        (
            &pg.url,
            "people",
            "catalog:patients",
            &[],
            "no source column maps to patient_id",
        ),
        (
            &pg.url,
            "people",
            "catalog:patients",
            &["--map", "name=patient_id"],
            "row 1: age \"forty\"",
        ),
        (
            "mysql://nobody@127.0.0.1:3306/test",
            "t",
            "x.csv",
            &[],
            "Access denied",
        ),
        // A password from a file is used (MariaDB's root has none: a wrong one is refused).
        (
            "mysql://root@127.0.0.1:3306/test",
            "t",
            "x.csv",
            &["--password-file", &pw],
            "Access denied",
        ),
    ];
    for (url, table, to, more, says) in cases {
        let mut args = vec!["import", "--connect", url, "--table", table, "--to", to];
        args.extend(more);
        let e = vw_fails(&data, &args);
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!e.contains("secret") && !e.contains("wrong"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    // Nothing was written: no file, no patient.
    assert!(!PathBuf::from("x.csv").exists());
    assert!(!data.exists(), "a failed import creates no data directory");
}
