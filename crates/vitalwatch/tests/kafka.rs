//! Kafka ingest against a real Kafka-protocol broker: Tansu on 127.0.0.1:9092 (or
//! `VITALWATCH_KAFKA`), started by `scripts/services.sh`. Every test uses topics and a
//! consumer group of its own, so tests run side by side on one broker.
//!
//! What they show: records produced by `vitalwatch produce` are archived exactly once and
//! raise exactly the alerts `replay` raises over the same records, also when the consumer
//! is killed with SIGKILL in the middle and restarted; alert events reach an alert topic
//! keyed by patient with their idempotency key; garbage lands on the dead-letter topic
//! with its reason while the records around it are processed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Outcome, free_port, os, outcome, serve, sql, vitalwatch};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn brokers() -> String {
    let b = std::env::var("VITALWATCH_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    assert!(
        std::net::TcpStream::connect(&b).is_ok(),
        "no Kafka broker on {b}: start it with `bash scripts/services.sh`"
    );
    b
}

/// A name no other test or run uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for t in r {
        t.unwrap();
    }
}

/// One record read back from a topic.
#[derive(Debug)]
struct Record {
    key: Option<String>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Every record of `topic` (`partitions` of them), waiting until at least `expect` arrived
/// and no more come for a second.
fn read_topic(topic: &str, partitions: i32, expect: usize) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for x in h.iter() {
                        headers.insert(
                            x.key.to_owned(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None if out.len() >= expect && quiet_since.elapsed() > Duration::from_secs(1) => {
                break;
            }
            None => {}
        }
    }
    assert!(
        out.len() >= expect,
        "{topic}: {} of {expect} records",
        out.len()
    );
    out
}

/// The sum of a metric over its label sets, from `GET /metrics`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut sum = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(name)
            && (rest.starts_with('{') || rest.starts_with(' '))
        {
            let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Waits until `name` reaches `at_least` (panics after `timeout`, or if `child` exits).
fn wait_metric(child: &mut Child, port: u16, name: &str, at_least: f64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vitalwatch run exited early: {status}");
        }
        let v = metric(port, name).unwrap_or(0.0);
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, waited for {at_least}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a run as Ctrl-C does and waits for it to drain and exit cleanly.
fn interrupt(mut child: Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "vitalwatch run: {status}");
}

/// `vitalwatch run --profile classic` reading `topic` in `group`.
fn run_kafka(data: &Path, config: &Path, port: u16, patients: usize) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalwatch"));
    cmd.args([
        "run",
        "--profile",
        "classic",
        "--demo-patients",
        &patients.to_string(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data",
        &os(data),
        "--config",
        &os(config),
    ]);
    serve(cmd, port)
}

fn write_config(dir: &Path, topic: &str, group: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[[sources]]
type = "kafka"
brokers = "{}"
topics = ["{topic}"]
group = "{group}"
dead_letter_topic = "{topic}-dead"

[alerts]
console = false

[pipeline]
checkpoint_interval = "300ms"
{extra}
"#,
            brokers()
        ),
    )
    .unwrap();
    path
}

/// Simulated records observed in the last minutes (so a live source admits them):
/// classic records of 500 patients, then canonical ones of 400, 100,000 in all.
fn recordings(dir: &Path) -> Vec<PathBuf> {
    let start = (chrono::Utc::now() - chrono::Duration::seconds(100))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut files = Vec::new();
    for (format, patients, seconds, seed) in [
        ("classic", "500", "60s", "1"),
        ("canonical", "400", "40s", "2"),
    ] {
        let f = dir.join(format!("{format}.jsonl"));
        let o = vitalwatch(&[
            "simulate",
            "--format",
            format,
            "--patients",
            patients,
            "--rate",
            "1000",
            "--duration",
            seconds,
            "--seed",
            seed,
            "--start",
            &start,
            "--output",
            &os(&f),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(f);
    }
    files
}

fn produce(topic: &str, files: &[PathBuf], options: &[&str]) {
    let mut args = vec![
        "produce".to_owned(),
        "--kafka".into(),
        brokers(),
        "--topic".into(),
        topic.into(),
    ];
    for o in options {
        args.extend(["--option".to_owned(), (*o).to_owned()]);
    }
    args.extend(files.iter().map(os));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = vitalwatch(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// What one `replay` of the same records leaves.
fn replayed(dir: &Path, files: &[PathBuf]) -> Outcome {
    let data = dir.join("replayed");
    let mut args = vec![
        "replay".to_owned(),
        "--profile".into(),
        "classic".into(),
        "--demo-patients".into(),
        "500".into(),
        "--data".into(),
        os(&data),
    ];
    args.extend(files.iter().map(os));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = vitalwatch(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    outcome(&data)
}

const RECORDS: f64 = 100_000.0;

/// One replica consumes 100,000 mixed records: every reading is archived once, the
/// alerts are those `replay` raises over the same records, and every alert event is on
/// the alert topic once, keyed by patient, with its idempotency key.
#[test]
fn one_replica_archives_every_reading_once_and_alerts_like_replay() {
    let dir = tempfile::tempdir().unwrap();
    let files = recordings(dir.path());
    let topic = unique("vitals");
    let alerts = format!("{topic}-alerts");
    create_topic(&topic, 4);
    create_topic(&format!("{topic}-dead"), 1);
    create_topic(&alerts, 4);
    produce(&topic, &files, &[]);
    let want = replayed(dir.path(), &files);

    let config = write_config(
        dir.path(),
        &topic,
        &unique("group"),
        &format!(
            "\n[[notifiers]]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{alerts}\"\n",
            brokers()
        ),
    );
    let data = dir.path().join("kafka");
    let port = free_port();
    let mut child = run_kafka(&data, &config, port, 500);
    wait_metric(
        &mut child,
        port,
        "vitalwatch_kafka_committed_offset",
        RECORDS,
        Duration::from_secs(300),
    );
    let lag = metric(port, "vitalwatch_kafka_consumer_lag");
    interrupt(child);
    let got = outcome(&data);
    assert_eq!(got, want, "kafka run vs replay of the same records");
    assert_eq!(
        sql(&data, "SELECT count(*) FROM dead_letters"),
        "0",
        "every simulated record decodes"
    );
    assert!(lag.is_some(), "the lag gauge is exported");

    // The alert topic: each event once, keyed by its patient, idempotency key attached.
    let events = read_topic(&alerts, 4, got.log.len());
    assert_eq!(events.len(), got.log.len());
    let mut keys = BTreeSet::new();
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(e.key.as_deref(), v["patient_id"].as_str());
        let k = &e.headers["vitalwatch-idempotency-key"];
        assert!(keys.insert(k.clone()), "sent twice: {k}");
    }
}

/// SIGKILL in the middle of consuming, then a restart: nothing missing, nothing archived
/// or notified twice; the same outcome as one replay of the records.
#[test]
fn a_killed_consumer_restarts_with_nothing_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let files = recordings(dir.path());
    let topic = unique("vitals");
    create_topic(&topic, 4);
    create_topic(&format!("{topic}-dead"), 1);
    produce(&topic, &files, &[]);
    let want = replayed(dir.path(), &files);

    let config = write_config(dir.path(), &topic, &unique("group"), "");
    let data = dir.path().join("kafka");
    let port = free_port();
    let mut child = run_kafka(&data, &config, port, 500);
    // Past a few checkpoints, well before the end.
    wait_metric(
        &mut child,
        port,
        "vitalwatch_kafka_committed_offset",
        RECORDS * 0.3,
        Duration::from_secs(300),
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let port = free_port();
    let mut child = run_kafka(&data, &config, port, 500);
    wait_metric(
        &mut child,
        port,
        "vitalwatch_kafka_committed_offset",
        RECORDS,
        Duration::from_secs(300),
    );
    interrupt(child);
    assert_eq!(outcome(&data), want, "killed and restarted vs replay");
}

/// Undecodable, mistyped, implausible and oversized records go to the dead-letter topic
/// with their reason and original bytes, and to the warehouse; the records around them
/// are processed.
#[test]
fn garbage_goes_to_the_dead_letter_topic_and_the_rest_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("vitals");
    let dead = format!("{topic}-dead");
    create_topic(&topic, 1);
    create_topic(&dead, 1);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let good = |i: u32| {
        format!(
            r#"{{"customerId": 1, "heartBeat": {}, "bp": 120, "message_time": "{}"}}"#,
            60 + i,
            (chrono::Utc::now() - chrono::Duration::seconds(60 - i as i64))
                .format("%Y-%m-%d %H:%M:%S")
        )
    };
    let huge = format!(
        r#"{{"patient_id": "1", "note": "{}"}}"#,
        "x".repeat(10 << 20)
    );
    let bad = [
        "this is not json".to_owned(),
        r#"{"patient_id": "2", "observed_at": "NOW", "vitals": "garbled"}"#.replace("NOW", &now),
        r#"{"customerId": 3, "heartBeat": 900, "bp": 120}"#.to_owned(),
        huge.clone(),
    ];
    let mut lines = Vec::new();
    for (i, b) in bad.iter().enumerate() {
        lines.push(good(2 * i as u32));
        lines.push(b.clone());
        lines.push(good(2 * i as u32 + 1));
    }
    let file = dir.path().join("mixed.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    produce(&topic, &[file], &["message.max.bytes=33554432"]);

    let config = write_config(dir.path(), &topic, &unique("group"), "");
    let data = dir.path().join("kafka");
    let port = free_port();
    let mut child = run_kafka(&data, &config, port, 5);
    wait_metric(
        &mut child,
        port,
        "vitalwatch_kafka_committed_offset",
        lines.len() as f64,
        Duration::from_secs(120),
    );
    let dead_count = metric(port, "vitalwatch_kafka_dead_letters_total");
    interrupt(child);
    assert_eq!(dead_count, Some(bad.len() as f64));

    let on_topic = read_topic(&dead, 1, bad.len());
    assert_eq!(on_topic.len(), bad.len());
    for (rec, original) in on_topic.iter().zip(&bad) {
        assert_eq!(rec.payload, original.as_bytes(), "original bytes kept");
        let reason = &rec.headers["vitalwatch-reason"];
        assert!(!reason.is_empty());
        assert!(
            rec.headers["vitalwatch-origin"].starts_with(&format!("{topic}/0@")),
            "{:?}",
            rec.headers
        );
    }
    assert!(
        on_topic[2].headers["vitalwatch-reason"].contains("heart"),
        "the implausible value is named: {:?}",
        on_topic[2].headers
    );
    assert_eq!(sql(&data, "SELECT count(*) FROM dead_letters"), "4");
    // Eight classic records of two readings each, around the garbage.
    assert_eq!(sql(&data, "SELECT count(*) FROM vitals"), "16");
}

/// A second replica joins the group in the middle of the stream (a graceful rebalance:
/// the first commits what it read from the partitions it gives up before it lets them
/// go): between their two warehouses and alert logs, every record is there exactly once,
/// as one replay of the records leaves it.
#[test]
fn a_replica_joining_mid_stream_takes_over_partitions_without_a_gap_or_a_double() {
    let dir = tempfile::tempdir().unwrap();
    let files = recordings(dir.path());
    let topic = unique("vitals");
    create_topic(&topic, 4);
    create_topic(&format!("{topic}-dead"), 1);
    let want = replayed(dir.path(), &files);

    // The first file while one replica runs; the second once both share the partitions
    // (so each has records of its own to read, however fast the first one was).
    produce(&topic, &files[..1], &[]);
    let config = write_config(dir.path(), &topic, &unique("group"), "");
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = run_kafka(&a_data, &config, a_port, 500);
    wait_metric(
        &mut a,
        a_port,
        "vitalwatch_kafka_committed_offset",
        RECORDS * 0.2,
        Duration::from_secs(300),
    );
    let mut b = run_kafka(&b_data, &config, b_port, 500);
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_rebalances_total",
        1.0,
        Duration::from_secs(60),
    );
    produce(&topic, &files[1..], &[]);
    // Done when the two replicas' committed offsets cover every record.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let committed: f64 = [a_port, b_port]
            .iter()
            .map(|&p| metric(p, "vitalwatch_kafka_committed_offset").unwrap_or(0.0))
            .sum();
        if committed >= RECORDS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed} of {RECORDS}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    interrupt(b);
    interrupt(a);
    let (ga, gb) = (outcome(&a_data), outcome(&b_data));
    let n = |s: &str| s.parse::<u64>().unwrap();
    assert!(
        n(&ga.vitals) > 0 && n(&gb.vitals) > 0,
        "both replicas did part of the work"
    );
    assert_eq!(n(&ga.vitals) + n(&gb.vitals), n(&want.vitals), "readings");
    assert_eq!(
        n(&ga.distinct_vitals) + n(&gb.distinct_vitals),
        n(&want.distinct_vitals)
    );
    assert_eq!(ga.log.len() + gb.log.len(), want.log.len(), "alert events");
    let union: BTreeSet<String> = ga.log.union(&gb.log).cloned().collect();
    assert_eq!(union, want.log, "the same alert events as one replay");
}

/// Two replicas in one group share a PostgreSQL catalog; one is killed with SIGKILL in
/// the middle of the stream. The survivor takes its partitions over from the offsets it
/// last committed; when the killed one is restarted (as its supervisor would), it removes
/// the files no committed checkpoint covers and delivers the alert events it recorded but
/// had not yet delivered. Between them: every reading archived once, every alert event
/// recorded once and written to exactly one alert log once — what one replay leaves.
#[test]
fn a_replica_killed_mid_stream_is_taken_over_with_nothing_missing_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let db = vitalwatch_connectors::postgres::ScratchDatabase::new();
    let files = recordings(dir.path());
    let topic = unique("vitals");
    create_topic(&topic, 4);
    create_topic(&format!("{topic}-dead"), 1);
    let want = replayed(dir.path(), &files);

    produce(&topic, &files[..1], &[]);
    let config = write_config(dir.path(), &topic, &unique("group"), "");
    // `catalog` is a top-level key: it goes before the first table.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("catalog = \"{}\"\n{text}", db.url)).unwrap();
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = run_kafka(&a_data, &config, a_port, 500);
    wait_metric(
        &mut a,
        a_port,
        "vitalwatch_kafka_committed_offset",
        RECORDS * 0.1,
        Duration::from_secs(300),
    );
    let mut b = run_kafka(&b_data, &config, b_port, 500);
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_rebalances_total",
        1.0,
        Duration::from_secs(60),
    );
    produce(&topic, &files[1..], &[]);
    // Both are reading; kill one while records are flowing.
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_records_total",
        RECORDS * 0.05,
        Duration::from_secs(300),
    );
    a.kill().unwrap();
    a.wait().unwrap();
    // The survivor gets every partition (after the group's session timeout) and reads
    // them to the end.
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_committed_offset",
        RECORDS,
        Duration::from_secs(300),
    );
    // The killed replica comes back, joins, and is stopped again.
    let a_port = free_port();
    let mut a = run_kafka(&a_data, &config, a_port, 500);
    wait_metric(
        &mut a,
        a_port,
        "vitalwatch_kafka_rebalances_total",
        1.0,
        Duration::from_secs(60),
    );
    interrupt(a);
    interrupt(b);

    let n = |s: &str| s.parse::<u64>().unwrap();
    let count = |data: &Path, q: &str| n(&sql(data, q));
    for (what, q, total) in [
        ("readings", "SELECT count(*) FROM vitals", &want.vitals),
        (
            "distinct readings",
            "SELECT count(*) FROM (SELECT DISTINCT patient_id, device_id, vital, observed_at, value FROM vitals)",
            &want.distinct_vitals,
        ),
        (
            "archived alert events",
            "SELECT count(*) FROM alerts",
            &want.alert_rows,
        ),
    ] {
        let (ga, gb) = (count(&a_data, q), count(&b_data, q));
        assert!(
            ga > 0 && gb > 0,
            "{what}: both replicas did part of the work"
        );
        assert_eq!(ga + gb, n(total), "{what}: a {ga} + b {gb}");
    }
    let (la, lb) = (common::alert_log(&a_data), common::alert_log(&b_data));
    assert_eq!(la.len() + lb.len(), want.log.len(), "alert events notified");
    let union: BTreeSet<String> = la.union(&lb).cloned().collect();
    assert_eq!(
        union, want.log,
        "the same alert events as one replay, each once"
    );
    use vitalwatch_connectors::store::AlertStore as _;
    let store = vitalwatch_connectors::postgres::PostgresStore::connect(&db.url).unwrap();
    assert_eq!(
        store.alerts(false, usize::MAX >> 1).unwrap().len(),
        want.catalog_alerts,
        "alerts in the shared catalog"
    );
}

/// A replica died with alert events recorded in the shared PostgreSQL catalog but not yet
/// sent to the alert topic, and does not come back: once its outbox lease lapses, a
/// running replica delivers them (after the last one the dead replica had delivered),
/// each once. A live replica's outbox is never touched.
#[test]
fn a_dead_replicas_undelivered_alert_events_are_delivered_by_a_survivor() {
    use vitalwatch_connectors::postgres::PostgresStore;
    use vitalwatch_connectors::store::{AlertStore as _, DeliveryAttempt, DeliveryOutcome};
    let dir = tempfile::tempdir().unwrap();
    let db = vitalwatch_connectors::postgres::ScratchDatabase::new();
    let topic = unique("pager");
    create_topic(&topic, 1);

    // Two other replicas' events: one dead (lease lapsed), one alive (lease held).
    let events = |origin: &str, n: usize| -> (PostgresStore, Vec<u64>) {
        let mut s = PostgresStore::connect(&db.url).unwrap().with_origin(origin);
        let mut seqs = Vec::new();
        for i in 0..n {
            let mut e = vitalwatch_connectors::store::contract::sample_event();
            e.alert_id = vitalwatch_core::alert::AlertId(format!("{origin}-{i}"));
            let text = serde_json::to_string(&e).unwrap();
            seqs.push(s.record_alert_events(&[(&e, &text)]).unwrap()[0].unwrap());
        }
        (s, seqs)
    };
    let (mut dead, dead_seqs) = events("rdead", 5);
    let (alive, _) = events("ralive", 3);
    // The dead one had sent its first event before it died (high priority: the
    // notifier's high lane, `pager/high`).
    dead.record_delivery(&DeliveryAttempt {
        consumer: "pager/high".into(),
        first_seq: dead_seqs[0],
        last_seq: dead_seqs[0],
        attempt: 1,
        at: vitalwatch_core::model::Timestamp(0),
        outcome: DeliveryOutcome::Delivered,
        error: None,
    })
    .unwrap();
    assert!(dead.claim_outbox("rdead", Duration::ZERO).unwrap());
    assert!(
        alive
            .claim_outbox("ralive", Duration::from_secs(600))
            .unwrap()
    );

    let config = dir.path().join("survivor.toml");
    std::fs::write(
        &config,
        format!(
            "catalog = \"{}\"\n[alerts]\nconsole = false\n[pipeline]\noutbox_lease = \"1s\"\n\
             [[notifiers]]\ntype = \"kafka\"\nname = \"pager\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\n",
            db.url,
            brokers()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut run = common::spawn_run(&dir.path().join("survivor"), Some(&config), port);
    wait_metric(
        &mut run,
        port,
        "vitalwatch_outbox_adopted_total",
        4.0,
        Duration::from_secs(60),
    );
    interrupt(run);

    let sent: Vec<String> = read_topic(&topic, 1, 4)
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            v["alert_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(sent, ["rdead-1", "rdead-2", "rdead-3", "rdead-4"]);
    assert_eq!(
        dead.cursor("pager/high").unwrap(),
        dead_seqs[4],
        "recorded under its origin"
    );
    assert_eq!(
        alive.cursor("pager/high").unwrap(),
        0,
        "a live replica's outbox is its own"
    );
}

/// Per-patient alert state moves with the partition (standard profile, shared
/// PostgreSQL catalog): replica a raises an alert and leaves the group; replica b, now
/// owning the partition, raises no second alert for the same condition and resolves a's
/// alert when the patient recovers.
#[test]
fn an_open_alert_moves_with_its_partition_to_the_next_replica() {
    use vitalwatch_connectors::postgres::PostgresStore;
    use vitalwatch_connectors::store::AlertStore as _;
    use vitalwatch_core::alert::AlertState;
    let dir = tempfile::tempdir().unwrap();
    let db = vitalwatch_connectors::postgres::ScratchDatabase::new();
    let topic = unique("ward");
    create_topic(&topic, 1);
    let config = write_config(dir.path(), &topic, &unique("group"), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "catalog = \"{}\"\n{text}\n[rules.thresholds]\npersistence = \"0s\"\n",
            db.url
        ),
    )
    .unwrap();
    for (what, file) in [
        ("patients", "patients_information.csv"),
        ("thresholds", "threshold_ref.csv"),
    ] {
        let (c, d, f) = (
            os(&config),
            os(dir.path().join("admin")),
            format!("../../data/{file}"),
        );
        let o = vitalwatch(&[what, "import", "--config", &c, "--data", &d, &f]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let start = |data: &Path, port: u16| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalwatch"));
        cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data", &os(data), "--config", &os(&config)]);
        serve(cmd, port)
    };
    let mut sent = 0;
    let mut send = |heart_rate: u32| {
        sent += 1;
        let f = dir.path().join(format!("r{sent}.jsonl"));
        std::fs::write(
            &f,
            format!(
                "{{\"patient_id\": \"5\", \"observed_at\": \"{}\", \"vitals\": {{\"heart_rate\": {heart_rate}}}}}\n",
                chrono::Utc::now().to_rfc3339()
            ),
        )
        .unwrap();
        produce(&topic, &[f], &[]);
        sent as f64
    };
    let store = PostgresStore::connect(&db.url).unwrap();
    let alerts = || store.alerts(false, 100).unwrap();

    let (a_port, b_port) = (free_port(), free_port());
    let mut a = start(&dir.path().join("a"), a_port);
    wait_metric(
        &mut a,
        a_port,
        "vitalwatch_kafka_rebalances_total",
        1.0,
        Duration::from_secs(60),
    );
    let n = send(130);
    wait_metric(
        &mut a,
        a_port,
        "vitalwatch_kafka_committed_offset",
        n,
        Duration::from_secs(60),
    );
    let raised = alerts();
    assert_eq!(raised.len(), 1, "patient 5's heart rate 130 is high");
    let id = raised[0].latest.alert_id.clone();

    let mut b = start(&dir.path().join("b"), b_port);
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_rebalances_total",
        1.0,
        Duration::from_secs(60),
    );
    interrupt(a);
    // b owns the partition now (its committed offset is a's).
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_committed_offset",
        n,
        Duration::from_secs(60),
    );
    let n = send(140);
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_committed_offset",
        n,
        Duration::from_secs(60),
    );
    let still = alerts();
    assert_eq!(
        still.len(),
        1,
        "no second alert for the same condition: {still:?}"
    );
    assert_eq!(still[0].latest.state, AlertState::Triggered);
    let n = send(70);
    wait_metric(
        &mut b,
        b_port,
        "vitalwatch_kafka_committed_offset",
        n,
        Duration::from_secs(60),
    );
    interrupt(b);
    let end = alerts();
    assert_eq!(end.len(), 1);
    assert_eq!(end[0].latest.alert_id, id);
    assert_eq!(
        end[0].latest.state,
        AlertState::Resolved,
        "b resolved a's alert"
    );
}
