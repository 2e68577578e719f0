//! vitalwatch-core: the pure heart of vitalwatch.
//!
//! No I/O, no tokio, no network, no clock reads: time is always a parameter, so every
//! clinical rule is testable in microseconds and a replay is deterministic.
//!
//! # Layout
//! - [`clock`]: event-time admission of readings and the stream clock of replays.
//! - [`model`]: vitals, ids, timestamps, observations, patients, dead letters.
//! - [`reference`]: threshold bands and patients, classic CSV layouts.
//! - [`codec`]: classic and canonical JSON to observations, and back.
//! - [`rules`]: rule configuration, NEWS2.
//! - [`engine`]: per-patient state + rules → alert lifecycle events.
//! - [`alert`]: priorities, lifecycle, alert events, deterministic alert ids.
//! - [`simulate`]: deterministic patient simulator with labelled episodes and artifacts.
//! - [`evaluate`]: alarm quality: alert events scored against labelled episodes.
//!
//! Data flow: a codec turns bytes into [`model::Observation`]s (or dead letters), the
//! engine evaluates them against compiled reference data and emits alert events.

pub mod alert;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod evaluate;
pub mod model;
pub mod reference;
pub mod rules;
pub mod simulate;
