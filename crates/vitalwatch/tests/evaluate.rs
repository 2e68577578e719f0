//! `vitalwatch evaluate` through the built binary: the simulator and a recorded file give
//! the same scores, `--compare` and `--sweep` report what they promise, bad labels are
//! reported; and each profile's built-in threshold table in a fresh data directory.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn vitalwatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitalwatch"))
        .args(args)
        .env_remove("VITALWATCH_CONFIG")
        .env_remove("VITALWATCH_DATA")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = vitalwatch(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn os(p: impl AsRef<Path>) -> String {
    p.as_ref().to_str().expect("UTF-8 path").to_owned()
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    serde_json::from_str(&ok(&a)).unwrap()
}

#[test]
fn a_recorded_file_scores_exactly_like_the_simulator_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ward.jsonl");
    // 12 patients, one set each per second, for 90 minutes: the simulator's own stream.
    ok(&[
        "simulate",
        "--patients",
        "12",
        "--rate",
        "12",
        "--duration",
        "90m",
        "--seed",
        "5",
        "--output",
        &os(&file),
    ]);
    let simulated = json(&[
        "evaluate",
        "--compare",
        "--patients",
        "12",
        "--hours",
        "1.5",
        "--seed",
        "5",
    ]);
    let recorded = json(&[
        "evaluate",
        "--compare",
        "--patients",
        "12",
        "--input",
        &os(&file),
    ]);
    assert_eq!(simulated["source"]["kind"], "simulator");
    assert_eq!(recorded["source"]["kind"], "file");
    assert_eq!(recorded["source"]["skipped"], 0);
    assert_eq!(simulated["results"], recorded["results"]);
    let results = simulated["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let (classic, standard) = (&results[0], &results[1]);
    assert_eq!(classic["profile"], "classic");
    assert_eq!(standard["profile"], "standard");
    assert_eq!(standard["observation_sets"], 12 * 5400);
    assert_eq!(standard["episodes"], 2);
    assert_eq!(standard["detected"], 2);
    let nuisance = |r: &Value| r["total"]["nuisance_per_patient_day"].as_f64().unwrap();
    assert!(
        nuisance(standard) * 100.0 < nuisance(classic),
        "{} vs {}",
        nuisance(standard),
        nuisance(classic)
    );
    // Per priority, the notifications add up to the total.
    let sum: u64 = standard["by_priority"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["notifications"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, standard["total"]["notifications"].as_u64().unwrap());
}

#[test]
fn the_table_names_every_measure_and_the_sweep_every_combination() {
    let table = ok(&["evaluate", "--patients", "8", "--hours", "1", "--compare"]);
    for measure in [
        "deterioration episodes",
        "detected (sensitivity)",
        "time to first alarm: median / p90 / max",
        "after the standard-of-care trigger",
        "notifications per patient-day",
        "nuisance notifications per patient-day",
        "PPV",
        "high: notifications / nuisance per patient-day",
        "standard vs classic:",
    ] {
        assert!(table.contains(measure), "{measure}:\n{table}");
    }
    let sweep = ok(&[
        "evaluate",
        "--patients",
        "8",
        "--hours",
        "1",
        "--sweep",
        "persistence=0s,10s",
        "--sweep",
        "spo2_limit=88,90",
    ]);
    let rows: Vec<&str> = sweep
        .lines()
        .skip_while(|l| !l.starts_with("persistence"))
        .collect();
    assert_eq!(rows.len(), 5, "{sweep}");
    assert!(
        rows[1].starts_with("0s ") && rows[1].contains(" 88 "),
        "{sweep}"
    );
    let bad = vitalwatch(&["evaluate", "--sweep", "colour=red"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown knob"));
}

#[test]
fn records_that_cannot_be_scored_are_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("labelled.jsonl");
    let line = |s: u32, label: &str| {
        format!(
            r#"{{"patient_id":"1","device_id":"m1","observed_at":"2026-01-01T00:{:02}:{:02}Z","vitals":{{"heart_rate":130,"resp_rate":26,"spo2":95,"temp_c":38.5,"systolic":95,"consciousness":"A","on_oxygen":false}}{label}}}"#,
            s / 60,
            s % 60
        )
    };
    let mut lines: Vec<String> = (0..300)
        .map(|s| line(s, r#","annotation":"deterioration:sepsis""#))
        .collect();
    lines.push(line(300, r#","annotation":"sepsis""#));
    lines.push(r#"{"patient_id":"1","vitals":{"heart_rate":900}}"#.into());
    // Five minutes late: older than time.lateness (2m), so not evaluated, and said so.
    lines.push(line(0, ""));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let o = vitalwatch(&["evaluate", "--input", &os(&file), "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("skipped 2 of 303 records")
            && err.contains("line 301: unknown annotation \"sepsis\""),
        "{err}"
    );
    assert!(
        err.contains("did not evaluate 1 observation sets later than time.lateness (2m)"),
        "{err}"
    );
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["source"]["late"], 1);
    let r = &doc["results"][0];
    assert_eq!(r["episodes"], 1);
    assert_eq!(r["detected"], 1);
    assert_eq!(r["by_kind"][0]["kind"], "sepsis");
    // NEWS2 ≥ 7 from the first reading: the trigger is the episode's first reading.
    assert_eq!(
        r["episode_list"][0]["standard_of_care_trigger"],
        "2026-01-01T00:00:00Z"
    );
}

#[test]
fn a_fresh_data_directory_gets_the_built_in_table_of_its_profile() {
    let dir = tempfile::tempdir().unwrap();
    let data = os(dir.path().join("data"));
    let file = dir.path().join("in.jsonl");
    // Patient 2 (45) at heart rate 135 for a minute.
    let lines: Vec<String> = (0..60)
        .map(|s| {
            format!(
                r#"{{"patient_id":"2","device_id":"m2","observed_at":"2025-03-01T08:00:{s:02}Z","vitals":{{"heart_rate":135}}}}"#
            )
        })
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let keys = |profile: &str| -> Vec<String> {
        // The same file again, under another profile: --from-start processes it anew
        // (without it the replay would continue after its end, with nothing to do).
        ok(&[
            "replay",
            "--from-start",
            "--profile",
            profile,
            "--data",
            &data,
            &os(&file),
        ]);
        let log = std::fs::read_to_string(dir.path().join("data/alerts.jsonl")).unwrap();
        let mut k: Vec<String> = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|a| a["event"] == "triggered")
            .map(|a| format!("{}@{}", a["rule_key"].as_str().unwrap(), a["ref_version"]))
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let versions = || {
        ok(&[
            "thresholds",
            "list",
            "--versions",
            "--format",
            "csv",
            "--data",
            &data,
        ])
    };
    // Standard: the adult table's band 5 (≥ 131/min, NEWS2 3).
    assert_eq!(keys("standard"), ["threshold:heart_rate:5@1"]);
    assert!(versions().contains("built-in standard_thresholds.csv"));
    // Classic in the same directory: the classic table, as a new version (band 9: ≥ 74
    // for ages 41–100, one alert per reading).
    assert!(keys("classic").contains(&"threshold:heart_rate:9@2".to_owned()));
    assert!(versions().contains("built-in classic threshold_ref.csv"));
    // A table someone imported is never replaced by a built-in one.
    let mine = dir.path().join("mine.csv");
    std::fs::write(
        &mine,
        "ref_id,attribute,low_age_limit,high_age_limit,low_range_value,high_range_value,alert_flag,alert_message\n\
         1,heart_rate,0,130,0,139,0,Normal\n2,heart_rate,0,130,140,9999,1,Fast\n",
    )
    .unwrap();
    ok(&["thresholds", "import", "--data", &data, &os(&mine)]);
    ok(&["replay", "--from-start", "--data", &data, &os(&file)]);
    let v = versions();
    assert_eq!(v.lines().count(), 4, "header and three versions: {v}");
}
