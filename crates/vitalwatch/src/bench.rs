//! `vitalwatch bench`: measured speed, printed as readings/s and latency percentiles.
//!
//! - `bench engine`: the pure rules engine on one thread over pre-generated simulator
//!   observations (decoding and I/O excluded), for the standard and classic profiles, and
//!   the memory its per-patient and per-device state takes.
//! - `bench http`: a real server on a loopback port and a paced HTTP/1.1 client in the same
//!   process; latency is from each reading's `observed_at` (set by the client as it sends)
//!   to its alert being written to the catalog and the alert log.
//! - `bench kafka`: records/s one replica sustains from a real broker next to a bare
//!   rdkafka consumer on the same topic, and produce-to-alert latency at a steady rate.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;
use vitalwatch_core::engine::{Engine, Findings};
use vitalwatch_core::model::Observation;
use vitalwatch_core::reference::{CLASSIC_THRESHOLDS_CSV, ThresholdTable, parse_threshold_csv};
use vitalwatch_core::rules::{Profile, RulesConfig};
use vitalwatch_core::simulate::{SimConfig, Simulator};

use crate::config::Config;

/// `println!` that ends quietly when standard output is a closed pipe (`| head`).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::commands::emit(&format!("{}\n", format_args!($($arg)*)))?
    };
}
use crate::metrics::{Metrics, percentile};
use crate::pipeline::{Clock, Pipeline, PipelineOptions, wall_now};

/// `vitalwatch bench engine`
pub fn engine(patients: usize, readings: u64) -> anyhow::Result<()> {
    let mut sim = Simulator::new(SimConfig {
        patients,
        ..SimConfig::default()
    });
    // One hour of observations per patient would be large; 200k observation sets
    // (1.6 M readings) cover every patient many times and fit in cache-unfriendly memory,
    // like a real ward stream.
    let n_obs = 200_000usize;
    let input: Vec<Observation> = (0..n_obs).map(|_| sim.next_observation()).collect();
    let per_obs = input.iter().map(|o| o.vitals.len() as u64).sum::<u64>() as f64 / n_obs as f64;
    let table = ThresholdTable {
        version: 1,
        bands: parse_threshold_csv(CLASSIC_THRESHOLDS_CSV.as_bytes())?,
    };
    say!(
        "engine benchmark: {patients} patients, {readings} readings per profile ({per_obs:.0} vitals per observation set), one thread"
    );
    for profile in [Profile::Standard, Profile::Classic] {
        let rules = RulesConfig {
            profile,
            ..RulesConfig::default()
        };
        let mut input = input.clone();
        let rss_before = crate::commands::rss_mib();
        let mut engine = Engine::new(rules, sim.patients().to_vec(), table.clone());
        let mut findings = Findings::default();
        let mut done = 0u64;
        let mut events = 0u64;
        // Later passes shift time (untimed) so the engine sees a continuing stream.
        let span = input
            .last()
            .map(|o| o.observed_at.0 - input[0].observed_at.0 + 1)
            .unwrap_or(1);
        let mut elapsed = std::time::Duration::ZERO;
        while done < readings {
            let t = Instant::now();
            for o in &input {
                // The clock reads the reading's own time: a stream with no delay.
                engine.process(o, o.observed_at, &mut findings);
                done += o.vitals.len() as u64;
                events += findings.events.len() as u64;
                findings.clear();
                if done >= readings {
                    break;
                }
            }
            elapsed += t.elapsed();
            for o in input.iter_mut() {
                o.observed_at.0 += span;
            }
        }
        let secs = elapsed.as_secs_f64();
        say!(
            "  profile {:<8} {:>12.0} readings/s  ({done} readings in {secs:.3}s, {events} alert events)",
            profile.as_str(),
            done as f64 / secs
        );
        let (tracked_patients, tracked_devices) = engine.tracked();
        if let (Some(a), Some(b)) = (rss_before, crate::commands::rss_mib()) {
            say!(
                "  {:<16} state: {tracked_patients} patients, {tracked_devices} devices, {:.1} MiB resident ({:.0} bytes per patient)",
                "",
                b - a,
                (b - a) * 1_048_576.0 / tracked_patients.max(1) as f64
            );
        }
        drop(engine);
    }
    Ok(())
}

/// `vitalwatch bench http`
pub async fn http(
    rate: u64,
    duration: vitalwatch_core::model::Duration,
    connections: usize,
    keep_data: Option<std::path::PathBuf>,
    notifiers_from: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // The outbox's notifiers beside the alert path: they must not slow it down.
    let notifiers = match &notifiers_from {
        Some(f) => crate::config::load(f)?.notifiers,
        None => Vec::new(),
    };
    let described: Vec<String> = notifiers
        .iter()
        .map(|n| format!("{} ({})", n.name(), n.kind()))
        .collect();
    let dir = match &keep_data {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => tempfile_dir()?,
    };
    let (cfg, pipeline, metrics) = crate::commands::off_runtime(|| {
        scratch_pipeline(
            dir.clone(),
            Profile::Classic,
            connections,
            true,
            false,
            notifiers,
        )
    })?;
    let cancel = CancellationToken::new();
    let (addr, server) = crate::http::serve(
        "127.0.0.1:0".parse()?,
        pipeline.handle(),
        Some(cfg.http.max_body_bytes),
        cancel.clone(),
    )
    .await?;
    let total = (rate as f64 * duration.micros() as f64 / 1e6) as u64;
    say!(
        "http benchmark: {total} readings at {rate}/s over {connections} connections to http://{addr}, classic profile (every reading alerts), notifiers: {}",
        if described.is_empty() {
            "none".to_owned()
        } else {
            described.join(", ")
        }
    );
    let start = Instant::now();
    let per_conn_interval = std::time::Duration::from_secs_f64(connections as f64 / rate as f64);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let n = total / connections as u64 + u64::from((c as u64) < total % connections as u64);
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await?;
            tokio::spawn(conn);
            let mut ticker = tokio::time::interval(per_conn_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // Stagger connections across the interval.
            tokio::time::sleep(per_conn_interval.mul_f64(c as f64 / connections as f64)).await;
            let mut rtts = Vec::with_capacity(n as usize);
            for i in 0..n {
                ticker.tick().await;
                // 100–149 bpm is in a classic "Higher Heart Rate" band at every age. One
                // patient per connection: two readings of one patient in the same
                // microsecond would be one alert (same id), by design.
                let body = format!(
                    r#"{{"patient_id":"{}","device_id":"bench-{c}","observed_at":"{}","vitals":{{"heart_rate":{}}}}}"#,
                    c + 1,
                    wall_now().to_datetime().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    100 + (i % 50)
                );
                let req = hyper::Request::post("/v1/readings")
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let t = Instant::now();
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await?;
                rtts.push(t.elapsed().as_micros() as u64);
                anyhow::ensure!(status == 202, "server answered {status}");
            }
            anyhow::Ok(rtts)
        }));
    }
    let mut rtts = Vec::new();
    for t in tasks {
        rtts.extend(t.await??);
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Wait for the last alerts to be written.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while metrics.alerts_total() < total && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    cancel.cancel();
    server.await??;
    let summary = tokio::task::spawn_blocking(move || pipeline.shutdown()).await??;
    let mut lat = metrics.take_latency_samples();
    lat.sort_unstable();
    rtts.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    say!(
        "  sent {} readings in {send_secs:.2}s = {:.0} readings/s; alerts written: {}",
        rtts.len(),
        rtts.len() as f64 / send_secs,
        metrics.alerts_total()
    );
    say!(
        "  ingest-to-alert latency: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} samples)",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.90)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0)),
        lat.len()
    );
    say!(
        "  HTTP round trip:         p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(percentile(&rtts, 0.50)),
        ms(percentile(&rtts, 0.90)),
        ms(percentile(&rtts, 0.99)),
        ms(rtts.last().copied().unwrap_or(0))
    );
    say!(
        "  dead letters: {}, warehouse rows: {}",
        summary.dead_letters,
        metrics.archived_rows.load(Relaxed)
    );
    match keep_data {
        Some(d) => say!("  data kept in {}", d.display()),
        None => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "vitalwatch-bench-{}-{}",
        std::process::id(),
        wall_now().micros()
    ));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

/// `vitalwatch bench kafka`: what one replica sustains from a real broker, side by side
/// with a bare consumer reading the same topic (the broker's own limit), then
/// produce-to-alert latency at a steady rate.
pub fn kafka(
    brokers: &str,
    records: u64,
    partitions: i32,
    rate: u64,
    duration: vitalwatch_core::model::Duration,
) -> anyhow::Result<()> {
    use rdkafka::Message as _;
    let run_id = format!("{}-{}", std::process::id(), wall_now().micros());

    // 1. Throughput: the same records read raw, then through the whole pipeline.
    let topic = format!("vitalwatch-bench-{run_id}");
    create_topic(brokers, &topic, partitions)?;
    let patients = 1000;
    let sets_per_sec = 1000.0;
    let span = records as f64 / sets_per_sec;
    let mut sim = Simulator::new(SimConfig {
        patients,
        seed: 7,
        start: wall_now().plus(vitalwatch_core::model::Duration(
            -((span + 120.0) * 1e6) as i64,
        )),
        interval: vitalwatch_core::model::Duration((patients as f64 / sets_per_sec * 1e6) as i64),
        ..SimConfig::default()
    });
    let mut out = crate::produce::KafkaOut::new(brokers, &topic, None, &Default::default())?;
    let mut line = String::new();
    let mut readings = 0u64;
    for _ in 0..records {
        let o = sim.next_observation();
        line.clear();
        vitalwatch_core::codec::encode_classic(&o, &mut line);
        // A classic record carries heart rate and systolic pressure only.
        readings += vitalwatch_core::codec::decode_record(
            line.as_bytes(),
            vitalwatch_core::codec::InputFormat::Classic,
            wall_now(),
        )
        .map_or(0, |o| o.vitals.len() as u64);
        out.send(Some(o.patient_id.as_str()), line.as_bytes())?;
    }
    say!(
        "kafka benchmark: {records} classic records ({readings} readings, {patients} patients) on {partitions} partitions of {topic} at {brokers}"
    );
    say!("  produced: {}", out.finish()?);

    let raw = bare_consumer(brokers, &topic, partitions)?;
    let t = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    // Timed from the first record, as the pipeline run is.
    let mut first = None;
    while n < records && t.elapsed() < std::time::Duration::from_secs(600) {
        if let Some(m) = raw.poll(std::time::Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m?.payload().map_or(0, <[u8]>::len) as u64;
            n += 1;
        }
    }
    let raw_secs = first.unwrap_or(t).elapsed().as_secs_f64();
    drop(raw);
    say!(
        "  bare consumer (rdkafka poll loop):  {:>9.0} records/s  ({n} records, {:.1} MB in {raw_secs:.2}s)",
        n as f64 / raw_secs,
        bytes as f64 / 1e6
    );

    for profile in [Profile::Standard, Profile::Classic] {
        let (dir, cfg, pipeline, metrics) = kafka_bench_pipeline(profile, patients, false)?;
        let settings = vitalwatch_connectors::source::kafka::KafkaSettings {
            brokers: brokers.to_owned(),
            topics: vec![topic.clone()],
            group: format!("vw-{}-{run_id}", profile.as_str()),
            dead_letter_topic: String::new(),
            ..Default::default()
        };
        let (secs, consumed) = consume_with_pipeline(&cfg, settings, pipeline, &metrics, |m| {
            m.records.load(Relaxed) >= records
        })?;
        say!(
            "  vitalwatch, {:<8} profile:     {:>9.0} records/s = {:.0} readings/s ({consumed} records in {secs:.2}s, {:.0} % of the bare consumer; {} alerts; durable and committed)",
            profile.as_str(),
            consumed as f64 / secs,
            readings as f64 * consumed as f64 / records as f64 / secs,
            100.0 * (consumed as f64 / secs) / (n as f64 / raw_secs),
            metrics.alerts_total()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    // 2. Latency at a steady rate: a bare consumer first (the broker's own latency),
    // then one replica (to the alert committed).
    let total = (rate as f64 * duration.micros() as f64 / 1e6) as u64;
    let topic = format!("vitalwatch-bench-latency-raw-{run_id}");
    create_topic(brokers, &topic, partitions)?;
    let producer = paced_producer(brokers, &topic, rate, total);
    let raw = bare_consumer(brokers, &topic, partitions)?;
    let mut lat = Vec::with_capacity(total as usize);
    let t = Instant::now();
    while (lat.len() as u64) < total && t.elapsed() < std::time::Duration::from_secs(600) {
        if let Some(m) = raw.poll(std::time::Duration::from_millis(100)) {
            let m = m?;
            let sent = observed_at(m.payload().unwrap_or_default())?;
            lat.push(wall_now().micros().saturating_sub(sent).max(0) as u64);
        }
    }
    drop(raw);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    say!(
        "  latency at {rate}/s for {duration} (producer acks=all, not idempotent: see BENCHMARKS.md), {partitions} partitions"
    );
    latency_line("bare consumer, produce to poll:   ", lat)?;

    let topic = format!("vitalwatch-bench-latency-{run_id}");
    create_topic(brokers, &topic, partitions)?;
    let (dir, cfg, pipeline, metrics) = kafka_bench_pipeline(Profile::Classic, 16, true)?;
    let producer = paced_producer(brokers, &topic, rate, total);
    let settings = vitalwatch_connectors::source::kafka::KafkaSettings {
        brokers: brokers.to_owned(),
        topics: vec![topic.clone()],
        group: format!("vw-latency-{run_id}"),
        dead_letter_topic: String::new(),
        ..Default::default()
    };
    let m = metrics.clone();
    consume_with_pipeline(&cfg, settings, pipeline, &metrics, move |_| {
        m.alerts_total() >= total
    })?;
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    latency_line(
        "vitalwatch, produce to alert committed:",
        metrics.take_latency_samples(),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A pipeline in a scratch data directory for a Kafka source (files published at its
/// checkpoints), with `patients` demo patients; `samples`: keep every latency sample.
fn kafka_bench_pipeline(
    profile: Profile,
    patients: usize,
    samples: bool,
) -> anyhow::Result<(std::path::PathBuf, Config, Pipeline, Arc<Metrics>)> {
    let dir = tempfile_dir()?;
    let (cfg, pipeline, metrics) =
        scratch_pipeline(dir.clone(), profile, patients, samples, true, Vec::new())?;
    Ok((dir, cfg, pipeline, metrics))
}

/// A benchmark's pipeline on the wall clock in data directory `dir`, without console
/// output, with `patients` demo patients; `samples`: keep every latency sample;
/// `checkpoints_only`: publish warehouse files only at checkpoints (a Kafka source).
fn scratch_pipeline(
    dir: std::path::PathBuf,
    profile: Profile,
    patients: usize,
    samples: bool,
    checkpoints_only: bool,
    notifiers: Vec<crate::config::NotifierConfig>,
) -> anyhow::Result<(Config, Pipeline, Arc<Metrics>)> {
    let mut cfg = Config {
        data_dir: dir.clone(),
        notifiers,
        ..Config::default()
    };
    cfg.rules.profile = profile;
    cfg.alerts.console = false;
    crate::commands::seed_reference(&cfg, patients)?;
    let metrics = Arc::new(Metrics::default());
    if samples {
        metrics.keep_latency_samples();
    }
    let pipeline = Pipeline::start(
        &cfg,
        PipelineOptions {
            clock: Clock::Wall,
            console: false,
            publish_at_checkpoints_only: checkpoints_only,
            reference_refresh: None,
        },
        metrics.clone(),
    )?;
    Ok((cfg, pipeline, metrics))
}

/// The `observed_at` of a canonical record, in microseconds.
fn observed_at(record: &[u8]) -> anyhow::Result<i64> {
    let o = vitalwatch_core::codec::decode_record(
        record,
        vitalwatch_core::codec::InputFormat::Canonical,
        wall_now(),
    )?;
    Ok(o.observed_at.micros())
}

/// `bench notify`: one configured notifier against its real server. First `alerts`
/// events back to back (deliveries/s), then `alerts` more paced at `rate`/s, each
/// delivered when it is due (latency = due → the server's acknowledgement, so time spent
/// waiting behind a slow delivery counts, as it would for an alarm).
pub fn notify(
    config: &std::path::Path,
    name: &str,
    alerts: usize,
    rate: f64,
) -> anyhow::Result<()> {
    use vitalwatch_connectors::notify::{OutboxItem, test_event};
    let cfg = crate::config::load(config)?;
    let Some(n) = cfg.notifiers.iter().find(|n| n.name() == name) else {
        anyhow::bail!("no notifier named {name:?} in {}", config.display());
    };
    anyhow::ensure!(
        alerts > 0 && rate > 0.0,
        "--alerts and --rate must be positive"
    );
    let mut out = crate::pipeline::external_notifier(n)?;
    let event = |i: usize| {
        let mut e = test_event(wall_now());
        e.alert_id = vitalwatch_core::alert::AlertId(format!("bench-{}-{i}", std::process::id()));
        // A ward's worth of patients: one patient's events go out in order, different
        // patients' in parallel.
        e.patient_id = vitalwatch_core::model::PatientId(format!("bench-{}", i % 24).into());
        let text = serde_json::to_string(&e).unwrap_or_default();
        OutboxItem::new(i as u64 + 1, e, text)
    };
    say!(
        "notifier benchmark: {name} ({}), {alerts} alert events back to back, then {alerts} at {rate}/s",
        n.kind()
    );
    // As a lane does: up to `max_batch` events per call (an e-mail notifier sends them
    // over that many connections at once), each call with whatever is due.
    let max = out.max_batch().max(1);
    let mut failed = 0usize;
    let mut first_error = None;
    let t = Instant::now();
    let all: Vec<usize> = (0..alerts).collect();
    for chunk in all.chunks(max) {
        let batch: Vec<OutboxItem> = chunk.iter().map(|&i| event(i)).collect();
        if let Err(e) = out.deliver(&batch) {
            failed += chunk.len();
            first_error.get_or_insert(e);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        // Every delivery failing measures nothing: say why and stop.
        anyhow::ensure!(failed < alerts, "every delivery failed; the first: {e}");
        say!("  first failure: {e}");
    }
    say!(
        "  back to back: {:.1} deliveries/s ({alerts} in {secs:.2}s, {failed} failed, up to {max} per call)",
        (alerts - failed) as f64 / secs
    );
    let step = std::time::Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let due = |i: usize| start + step.mul_f64(i as f64);
    let mut lat = Vec::with_capacity(alerts);
    failed = 0;
    let mut i = 0;
    while i < alerts {
        if let Some(wait) = due(i).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = Instant::now();
        let mut j = i + 1;
        while j < alerts && j - i < max && due(j) <= now {
            j += 1;
        }
        let batch: Vec<OutboxItem> = (i..j).map(|k| event(alerts + k)).collect();
        let ok = out.deliver(&batch).is_ok();
        let done = Instant::now();
        if ok {
            lat.extend((i..j).map(|k| done.duration_since(due(k)).as_micros() as u64));
        } else {
            failed += j - i;
        }
        i = j;
    }
    latency_line(
        &format!("at {rate}/s ({failed} failed): delivery latency"),
        lat,
    )
}

/// Prints latency percentiles (microsecond samples) in milliseconds.
fn latency_line(what: &str, mut lat: Vec<u64>) -> anyhow::Result<()> {
    lat.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    say!(
        "  {what} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} samples)",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.90)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or(0)),
        lat.len()
    );
    Ok(())
}

/// Produces `total` canonical readings at `rate`/s, each stamped with the time it is
/// sent, after a pause for the consumer to join (the latency is the pipeline's, not the
/// group join's). Every reading (100–149 bpm) alerts under the classic table.
fn paced_producer(
    brokers: &str,
    topic: &str,
    rate: u64,
    total: u64,
) -> std::thread::JoinHandle<anyhow::Result<String>> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(8));
        // Tansu answers an idempotent producer's requests with a delay of up to 500 ms
        // (measured: p99 470 ms against 29 ms without idempotence): that would measure
        // the broker, not vitalwatch. A 2 ms linger batches: one request per record
        // (linger 0) falls behind 5,000 records/s on this broker and queues for seconds.
        let options = [
            ("linger.ms", "2"),
            ("enable.idempotence", "false"),
            ("acks", "all"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
        let mut out = crate::produce::KafkaOut::new(&brokers, &topic, Some(rate as f64), &options)?;
        for i in 0..total {
            let p = i % 16 + 1;
            let body = format!(
                r#"{{"patient_id":"{p}","device_id":"bench-{p}","observed_at":"{}","vitals":{{"heart_rate":{}}}}}"#,
                wall_now()
                    .to_datetime()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                100 + (i % 50)
            );
            out.send(Some(&p.to_string()), body.as_bytes())?;
        }
        out.finish()
    })
}

/// Runs a Kafka source into `pipeline` until `done` says so (or ten minutes pass), then
/// stops it (its last checkpoint durable and committed) and the pipeline; returns the
/// seconds from start to `done` and the records consumed.
fn consume_with_pipeline(
    cfg: &Config,
    settings: vitalwatch_connectors::source::kafka::KafkaSettings,
    pipeline: Pipeline,
    metrics: &Arc<Metrics>,
    done: impl Fn(&vitalwatch_connectors::source::kafka::KafkaMetrics) -> bool,
) -> anyhow::Result<(f64, u64)> {
    let source = crate::pipeline::kafka_source(cfg, settings, pipeline.handle().source)?;
    let km = source.metrics();
    metrics.add_kafka(km.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = Instant::now();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || source.run(&|| stop.load(Relaxed)))
    };
    // The clock starts at the first record, not at the group join.
    let mut first = None;
    while !done(&km) && t.elapsed() < std::time::Duration::from_secs(600) {
        if first.is_none() && km.records.load(Relaxed) > 0 {
            first = Some(Instant::now());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let secs = first.unwrap_or(t).elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("kafka source panicked"))??;
    pipeline.shutdown()?;
    Ok((secs, km.records.load(Relaxed)))
}

/// A plain rdkafka consumer reading every partition of `topic` from the beginning, with
/// the fetch wait the Kafka source uses (no commits): the broker's own limit.
fn bare_consumer(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<rdkafka::consumer::BaseConsumer> {
    use rdkafka::consumer::Consumer;
    let raw: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka wants a group even for assigned partitions; nothing is committed.
        .set("group.id", format!("bare-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    raw.assign(&tpl)?;
    Ok(raw)
}

/// Creates a topic with `partitions` partitions.
fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for r in rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
    ))? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    Ok(())
}
