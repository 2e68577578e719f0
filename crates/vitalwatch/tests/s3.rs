//! The warehouse on object storage, against a real S3 API: moto's server (PyPI
//! `moto[server]`, installed by `scripts/services.sh`), one private instance per test on
//! a free port (the shared one on 5000 is reset by the SNS tests).
//!
//! - `run` writes to the bucket while it runs and leaves nothing behind in its spool;
//! - a `replay` killed with SIGKILL part-way and run again leaves the bucket with exactly
//!   the rows of one clean replay into a local warehouse (count and checksum);
//! - `warehouse compact` merges each hour's objects into one without changing a row, and
//!   `warehouse retain` removes old days from the bucket.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, os, sql};

/// A moto server of this test's own, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Moto {
    moto_on(free_port())
}

fn moto_on(port: u16) -> Moto {
    let bin = std::env::var_os("VITALWATCH_SERVICES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/vitalwatch-services")
        })
        .join("moto/venv/bin/moto_server");
    assert!(
        bin.is_file(),
        "moto is not installed ({}): run `bash scripts/services.sh`",
        bin.display()
    );
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_for_port(port, "moto");
    Moto { child, port }
}

impl Moto {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    fn create_bucket(&self, bucket: &str) {
        let r = ureq::put(&self.url(bucket)).send_empty().unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Copies an object (S3 `PUT` with `x-amz-copy-source`).
    fn copy(&self, bucket: &str, from: &str, to: &str) {
        let r = ureq::put(&self.url(&format!("{bucket}/{to}")))
            .header("x-amz-copy-source", format!("/{bucket}/{from}"))
            .send_empty()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(self.keys(bucket, to).contains(&to.to_owned()));
    }

    /// The keys under `prefix` in `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let body = ureq::get(&self.url(&format!("{bucket}?list-type=2&prefix={prefix}")))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .map(|k| k.split("</Key>").next().unwrap().to_owned())
            .collect()
    }

    /// A config for a warehouse in `bucket` under `wh/`, plus `extra` TOML.
    fn config(&self, dir: &Path, bucket: &str, extra: &str) -> PathBuf {
        let path = dir.join("vw.toml");
        std::fs::write(
            &path,
            format!(
                "[warehouse]\nlocation = \"s3://{bucket}/wh\"\ns3_endpoint = \"http://127.0.0.1:{}\"\nroll_interval = \"1s\"\n{extra}",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

/// The built binary running `args` with `config`, moto's credentials in its environment.
fn vw(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalwatch"));
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .args(args)
        .args(["--config", &os(config)]);
    c
}

/// Runs `args` to success; stdout and stderr.
fn ok(config: &Path, args: &[&str]) -> String {
    let o = vw(config, args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `query --format csv` against the bucket; the rows without the header.
fn s3_sql(config: &Path, data: &Path, q: &str) -> String {
    let o = vw(
        config,
        &["query", "--format", "csv", "--data", &os(data), q],
    )
    .output()
    .unwrap();
    assert!(
        o.status.success(),
        "{q}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    out.split_once('\n')
        .map_or(out.clone(), |(_, rest)| rest.trim().to_owned())
}

/// Published Parquet files still in the local spool.
/// A simulated ward recording (`ward.jsonl`) and, as the reference, one clean replay of
/// it into a local data directory (`local`).
fn recorded_ward(dir: &Path, patients: &str, duration: &str, seed: &str) -> (PathBuf, PathBuf) {
    let input = dir.join("ward.jsonl");
    let o = common::vitalwatch(&[
        "simulate",
        "--patients",
        patients,
        "--duration",
        duration,
        "--seed",
        seed,
        "--output",
        &os(&input),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let local = dir.join("local");
    let o = common::vitalwatch(&["replay", &os(&input), "--data", &os(&local)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (input, local)
}

fn spooled(data: &Path) -> usize {
    fn walk(p: &Path, n: &mut usize) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, n);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    walk(&data.join("warehouse"), &mut n);
    n
}

#[test]
fn run_writes_the_warehouse_to_the_bucket_and_reads_it_back() {
    let s3 = moto();
    s3.create_bucket("ward");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = s3.config(dir.path(), "ward", "");
    let d = os(&data);
    ok(
        &config,
        &[
            "patients",
            "import",
            "../../data/patients_information.csv",
            "--data",
            &d,
        ],
    );
    // The snapshot went straight to the bucket.
    assert_eq!(s3.keys("ward", "wh/patients/").len(), 1);
    let out = ok(&config, &["run", "--duration", "4s", "--data", &d]);
    assert!(out.contains("vitals rows"), "{out}");
    let vitals = s3.keys("ward", "wh/vitals/");
    assert!(!vitals.is_empty(), "no vitals object in the bucket");
    assert!(
        vitals
            .iter()
            .all(|k| k.contains("/date=") && k.ends_with(".parquet")),
        "{vitals:?}"
    );
    assert_eq!(spooled(&data), 0, "every published file was uploaded");
    let n: u64 = s3_sql(&config, &data, "SELECT count(*) FROM vitals")
        .parse()
        .unwrap();
    assert!(n > 0, "vitals rows read back from the bucket: {n}");
    assert_eq!(s3_sql(&config, &data, "SELECT count(*) FROM patients"), "5");
}

#[test]
fn a_killed_replay_compaction_and_retention_on_the_bucket_lose_and_double_nothing() {
    let s3 = moto();
    s3.create_bucket("hist");
    let dir = tempfile::tempdir().unwrap();
    // The reference: one clean replay into a local warehouse.
    let (input, local) = recorded_ward(dir.path(), "8", "2h", "3");
    // An integer checksum: a float sum depends on the order files are read in.
    let check = "SELECT count(*), sum(CAST(round(value * 1000) AS BIGINT)), min(observed_at), max(observed_at) FROM vitals";
    let want = sql(&local, check);
    let want_scores = sql(&local, "SELECT count(*), sum(news2_score) FROM scores");

    // Into the bucket, killed part-way (checkpoints every 100 ms, so some are committed
    // and uploaded, some not), then the same command again.
    let data = dir.path().join("data");
    let config = s3.config(
        dir.path(),
        "hist",
        "[pipeline]\ncheckpoint_interval = \"100ms\"\n",
    );
    let mut child = vw(&config, &["replay", &os(&input), "--data", &os(&data)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s3.keys("hist", "wh/vitals/").len() < 3 {
        assert!(Instant::now() < deadline, "nothing reached the bucket");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replay ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // A file the crash left in the bucket past the committed position (published and
    // uploaded, but its checkpoint never committed: a window of milliseconds, so made
    // here by copying a real one under a later position): the restart must remove it,
    // or its rows would be there twice.
    let real = s3.keys("hist", "wh/vitals/").remove(0);
    let (dir_key, name) = real.rsplit_once('/').unwrap();
    let stream = name
        .strip_prefix("part-")
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    let planted = format!("{dir_key}/part-{stream}-p999999999999-planted.parquet");
    s3.copy("hist", &real, &planted);
    ok(&config, &["replay", &os(&input), "--data", &os(&data)]);
    assert!(
        !s3.keys("hist", "wh/vitals/").contains(&planted),
        "the uncommitted file was removed"
    );
    assert_eq!(spooled(&data), 0);
    assert_eq!(
        s3_sql(&config, &data, check),
        want,
        "the bucket holds one replay's rows"
    );
    assert_eq!(
        s3_sql(
            &config,
            &data,
            "SELECT count(*), sum(news2_score) FROM scores"
        ),
        want_scores
    );

    // Compaction: one object per hour partition, the same rows.
    let before = s3.keys("hist", "wh/vitals/");
    assert!(before.len() > 2, "{before:?}");
    let out = ok(
        &config,
        &[
            "warehouse",
            "compact",
            "--before",
            "2026-01-02",
            "--data",
            &os(&data),
        ],
    );
    assert!(out.contains("merged"), "{out}");
    let after = s3.keys("hist", "wh/vitals/");
    assert_eq!(after.len(), 2, "two hours, one object each: {after:?}");
    assert!(
        after.iter().all(|k| k.contains("part-compact-")),
        "{after:?}"
    );
    assert_eq!(
        s3_sql(&config, &data, check),
        want,
        "compaction changed no row"
    );

    // Retention: the day is older than 30 days, so every table's objects of it go.
    let out = ok(
        &config,
        &[
            "warehouse",
            "retain",
            "--older-than",
            "30d",
            "--data",
            &os(&data),
        ],
    );
    assert!(out.contains("removed"), "{out}");
    assert!(s3.keys("hist", "wh/vitals/").is_empty());
    assert!(s3.keys("hist", "wh/scores/").is_empty());
    assert_eq!(s3_sql(&config, &data, "SELECT count(*) FROM vitals"), "0");
}

#[test]
fn with_the_store_down_the_files_wait_in_the_spool_and_go_up_at_the_next_run() {
    // Nothing listens on the endpoint yet: the store is down.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (input, local) = recorded_ward(dir.path(), "3", "10m", "4");
    let check = "SELECT count(*), sum(CAST(round(value * 1000) AS BIGINT)) FROM vitals";
    let want = sql(&local, check);

    let data = dir.path().join("data");
    let config = dir.path().join("vw.toml");
    std::fs::write(
        &config,
        format!("[warehouse]\nlocation = \"s3://late/wh\"\ns3_endpoint = \"http://127.0.0.1:{port}\"\nroll_interval = \"1s\"\n"),
    )
    .unwrap();
    let o = vw(&config, &["replay", &os(&input), "--data", &os(&data)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a replay whose files could not be stored must say so"
    );
    assert!(
        err.contains("cannot upload the warehouse to s3://late/wh") && err.contains("wait in"),
        "{err}"
    );
    assert!(spooled(&data) > 0, "the files are kept locally");

    // The store is back: the next run (here the same replay, which has nothing left to
    // read) uploads what waited, and the bucket holds every reading once.
    let s3 = moto_on(port);
    s3.create_bucket("late");
    ok(&config, &["replay", &os(&input), "--data", &os(&data)]);
    assert_eq!(spooled(&data), 0);
    assert_eq!(s3_sql(&config, &data, check), want);
}
