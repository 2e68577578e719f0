//! `vitalwatch bench`: measured speed, printed as readings/s and latency percentiles.
//!
//! - `bench engine`: the pure rules engine on one thread over pre-generated simulator
//!   observations (decoding and I/O excluded), for the standard and classic profiles, and
//!   the memory its per-patient and per-device state takes.
//! - `bench http`: a real server on a loopback port and a paced HTTP/1.1 client in the same
//!   process; latency is from each reading's `observed_at` (set by the client as it sends)
//!   to its alert being written to the catalog and the alert log.

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
) -> anyhow::Result<()> {
    let dir = match &keep_data {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => tempfile_dir()?,
    };
    let mut cfg = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    cfg.rules.profile = Profile::Classic;
    cfg.alerts.console = false;
    crate::commands::seed_reference(&cfg, connections)?;
    let metrics = Arc::new(Metrics::default());
    metrics.keep_latency_samples();
    let pipeline = Pipeline::start(
        &cfg,
        PipelineOptions {
            clock: Clock::Wall,
            console: false,
            publish_at_checkpoints_only: false,
        },
        metrics.clone(),
    )?;
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
        "http benchmark: {total} readings at {rate}/s over {connections} connections to http://{addr}, classic profile (every reading alerts)"
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
