//! vitalwatch, the binary's library: CLI, configuration, pipeline wiring, HTTP, telemetry.
//!
//! # Layout
//! - [`cli`]: the command line (clap).
//! - [`commands`]: what each subcommand does.
//! - [`config`]: the TOML configuration, documented defaults, validation.
//! - [`pipeline`]: sources → engine → alert outputs | warehouse, on bounded channels.
//! - [`http`]: HTTP ingest, health, metrics, alert API.
//! - [`metrics`]: counters and the alert-latency histogram (Prometheus).
//! - [`produce`]: `vitalwatch produce` and `simulate --kafka` (readings onto a topic).
//! - [`adopt`]: outbox leases; delivering a dead replica's alert events.
//! - [`bench`]: `vitalwatch bench`.
//! - [`routing`]: `[[routes]]`: which alert events reach which notifier, escalation tiers.
//! - [`evaluate`]: `vitalwatch evaluate`, alarm quality on labelled episodes.
//! - [`transfer`]: `vitalwatch import|export|transfer job`, relational databases in and out.

pub mod adopt;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod evaluate;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod produce;
pub mod routing;
pub mod transfer;

use clap::Parser;
use cli::{BenchCommand, Cli, Command};

/// Runs the command line; the binary's `main` is just this.
pub fn main_with_args() -> anyhow::Result<()> {
    let cli = Cli::parse();
    commands::QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(commands::colour_on(std::io::stderr().is_terminal()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VITALWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vitalwatch=info")),
        )
        .init();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Run(a) => rt()?.block_on(commands::run(a)),
        Command::Replay(a) => commands::replay(a),
        Command::Simulate(a) => commands::simulate(a),
        Command::Produce(a) => produce::produce(a),
        Command::Query(a) => rt()?.block_on(commands::query(a)),
        Command::Import(a) => transfer::import(a).map(|_| ()),
        Command::Export(a) => transfer::export(a),
        Command::Transfer(c) => transfer::transfer(c),
        Command::History(a) => rt()?.block_on(commands::history(a)),
        Command::Report(c) => {
            // The catalog's clients block: read it before the runtime starts.
            let patients = commands::report_patients(&c)?;
            rt()?.block_on(commands::report(c, patients))
        }
        Command::Patients(c) => commands::patients(c),
        Command::Thresholds(c) => commands::thresholds(c),
        Command::Alerts(c) => commands::alerts(c),
        Command::Config(c) => commands::config_cmd(c),
        Command::Notify(c) => commands::notify(c),
        Command::Audit(c) => commands::audit(c),
        Command::Warehouse(c) => commands::warehouse_cmd(c),
        Command::Evaluate(a) => evaluate::evaluate(a),
        Command::Bench(BenchCommand::Engine { patients, readings }) => {
            bench::engine(patients, readings)
        }
        Command::Bench(BenchCommand::Kafka {
            brokers,
            records,
            partitions,
            rate,
            duration,
        }) => bench::kafka(
            &brokers,
            records,
            partitions,
            rate,
            vitalwatch_core::model::Duration::parse(&duration)?,
        ),
        Command::Bench(BenchCommand::Notify {
            notifier,
            config,
            alerts,
            rate,
        }) => bench::notify(&config, &notifier, alerts, rate),
        Command::Bench(BenchCommand::Http {
            rate,
            duration,
            connections,
            keep_data,
            notifiers_from,
        }) => {
            let d = vitalwatch_core::model::Duration::parse(&duration)?;
            rt()?.block_on(bench::http(rate, d, connections, keep_data, notifiers_from))
        }
    }
}
