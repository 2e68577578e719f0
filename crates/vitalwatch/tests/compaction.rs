//! `warehouse compact` end to end, with real processes: beside a live `run` that keeps
//! writing into the partitions being merged, and killed with SIGKILL at several points.
//! Readers must never see a row twice or miss one, and no partial file may ever be
//! visible.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{os, sql, vitalwatch};

/// The Parquet files a reader of one table folder sees (hidden folders skipped).
fn visible_files(table_dir: &Path) -> Vec<String> {
    let visible = |p: &Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for day in visible(table_dir) {
        for hour in visible(&day) {
            for f in visible(&hour) {
                if f.extension().is_some_and(|x| x == "parquet") {
                    out.push(f.display().to_string());
                }
            }
        }
    }
    out
}

/// [`visible_files`] of every table under `root`.
fn all_visible_files(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .flat_map(|t| visible_files(&t.path()))
        .collect()
}

#[test]
fn compaction_beside_a_live_run_loses_and_doubles_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("vw.toml");
    // A file a second per partition, so there is plenty to merge while `run` writes.
    std::fs::write(&config, "[warehouse]\nroll_interval = \"1s\"\n").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args([
            "run",
            "--duration",
            "10s",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &os(&data),
            "--config",
            &os(&config),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let root = data.join("warehouse");
    let deadline = Instant::now() + Duration::from_secs(30);
    while visible_files(&root.join("vitals")).len() < 3 {
        assert!(Instant::now() < deadline, "run published no files");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Merge today's partitions (the ones `run` is writing into) twice while it runs.
    let tomorrow = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    for _ in 0..2 {
        let o = vitalwatch(&[
            "warehouse",
            "compact",
            "--before",
            &tomorrow,
            "--table",
            "vitals",
            "--data",
            &os(&data),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(2));
    }
    let out = run.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let written: u64 = text
        .split("warehouse: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no warehouse summary in {text}"));
    assert!(written > 0);
    let counts = sql(
        &data,
        "SELECT count(*), count(DISTINCT (patient_id, device_id, vital, observed_at)) FROM vitals",
    );
    assert_eq!(
        counts,
        format!("{written},{written}"),
        "every row the run wrote, once"
    );
}

#[test]
fn a_compaction_killed_at_any_point_shows_no_partial_file_and_the_next_one_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("ward.jsonl");
    let o = vitalwatch(&[
        "simulate",
        "--patients",
        "24",
        "--duration",
        "2h",
        "--seed",
        "9",
        "--output",
        &os(&input),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = dir.path().join("vw.toml");
    // Many small files: a checkpoint (one file per partition) every 100 ms.
    std::fs::write(&config, "[pipeline]\ncheckpoint_interval = \"100ms\"\n").unwrap();
    let o = vitalwatch(&[
        "replay",
        &os(&input),
        "--data",
        &os(&data),
        "--config",
        &os(&config),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let root = data.join("warehouse");
    let check = "SELECT count(*), sum(CAST(round(value * 1000) AS BIGINT)), min(observed_at), max(observed_at) FROM vitals";
    let want = sql(&data, check);
    let files_before = visible_files(&root.join("vitals")).len();
    assert!(files_before > 10, "{files_before} files");

    for delay_ms in [50, 200, 400, 800] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
            .args([
                "warehouse",
                "compact",
                "--before",
                "2026-01-02",
                "--data",
                &os(&data),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL (a no-op if it already finished)
        child.wait().unwrap();
        assert_eq!(sql(&data, check), want, "after a kill at {delay_ms} ms");
        for f in all_visible_files(&root) {
            let name = f.rsplit('/').next().unwrap();
            assert!(
                name.starts_with("part-") && !name.contains("inprogress"),
                "{f}"
            );
        }
    }
    let o = vitalwatch(&[
        "warehouse",
        "compact",
        "--before",
        "2026-01-02",
        "--data",
        &os(&data),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sql(&data, check), want);
    assert_eq!(
        visible_files(&root.join("vitals")).len(),
        2,
        "one file per hour"
    );
    // Nothing hidden is left behind either.
    for day in std::fs::read_dir(root.join("vitals")).unwrap().flatten() {
        for e in std::fs::read_dir(day.path()).unwrap().flatten() {
            assert!(
                !e.file_name().to_string_lossy().starts_with('.'),
                "{:?} left over",
                e.path()
            );
        }
    }
}
