//! Alarm quality: scores the engine's alert events against labelled deterioration episodes.
//!
//! Sits beside the data flow, not in it: `vitalwatch evaluate` feeds a labelled stream (the
//! simulator's, or a hospital's own recording) through an [`Engine`] exactly as `replay`
//! does, on the stream's own clock and ticked once a second of it, and hands every reading
//! and every alert event to a [`Scorer`]. Nothing here does I/O or reads a clock, so the
//! definitions below are tested on tiny hand-built streams whose answers are known.
//!
//! # Labels
//! Each reading may carry an [`Annotation`]: `deterioration:KIND` (the patient is
//! deteriorating; `KIND` is free, e.g. `sepsis`) or `artifact` (the sensor, not the patient:
//! a probe dropout). No annotation means a stable patient. The simulator writes exactly
//! these in the canonical output's `annotation` field.
//!
//! # Definitions
//! - **Episode**: a run of readings of one patient, in arrival order, that all carry the same
//!   `deterioration:KIND` label. It starts at its first labelled reading and ends at its last;
//!   a reading of the patient without that label (unlabelled, an artifact, another kind)
//!   ends it. Label every reading of the patient inside an episode, from every device.
//! - **Notification**: an alert event that reaches a person, [`AlertEventKind::notifies`]:
//!   `triggered`, `renotified`, `escalated` and `inputs_stale`. `acknowledged` and
//!   `resolved` are state changes, not sounds. An **alert** is one alert id (its
//!   `triggered` event). Times are `alert_generated_time`: when the nurse hears it.
//! - **Inside an episode**: a notification of the patient at a time from the episode's
//!   start while the episode is still open (not yet ended by a reading without its label);
//!   or, during the **grace period** after the episode's end ([`ScoreConfig::grace`],
//!   default 5 min), a re-notification, escalation or `inputs_stale` of an alert that
//!   already notified inside the episode: the alarm of a real deterioration winding down
//!   after treatment (NEWS2 alerts stay open for `news2.clear_after`). A new alert in the
//!   grace period is outside.
//! - **Nuisance**: every notification that is not inside an episode, re-notifications
//!   included. A notification during an artifact, or of an alert whose condition began
//!   during one (`episode_start` inside the artifact), is nuisance, and is also counted as
//!   caused by an artifact.
//! - **Detected**: an episode with at least one notification inside it at a time up to its
//!   end (the grace period does not count) from a clinical rule; technical alarms
//!   (`device_stale`) count as notifications but detect nothing. **Time to first alarm**:
//!   from the episode's start to that first notification.
//! - **Standard-of-care trigger**: the first reading of the episode at which NEWS2 (RCP 2017)
//!   of the patient's latest value of each parameter reaches 5, or any single available
//!   parameter scores 3 (unknown oxygen counts as air): when a nurse charting NEWS2 at that
//!   moment would call for review. **Time from the trigger** is from it to the first alarm:
//!   negative when vitalwatch alarmed first. Episodes that never reach the trigger have
//!   none.
//! - **Patient-days**: per patient, from the first to the last reading, summed.
//! - **PPV** (positive predictive value): notifications inside episodes over all
//!   notifications.
//! - **Percentiles**: the median is the middle value (the mean of the two middle ones for
//!   an even count); p90 is the nearest rank, the smallest value at or above 90 % of them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::alert::{AlertEvent, AlertEventKind, Priority};
use crate::clock::StreamClock;
use crate::engine::{Engine, Findings, Processed};
use crate::model::{
    Consciousness, Duration, Observation, Patient, PatientId, Spo2Scale, Timestamp, Vital, VitalSet,
};
use crate::rules::news2;
use crate::simulate::Label;

/// What a reading's label says was going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annotation<'a> {
    /// The patient is deteriorating; the kind names the episode (`sepsis`, …).
    Deterioration(&'a str),
    /// A sensor artifact: an alarm now is a nuisance.
    Artifact,
}

/// An annotation that is neither `deterioration:KIND` nor `artifact`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown annotation {0:?}: expected \"deterioration:KIND\" (KIND in a-z, 0-9, _) or \"artifact\""
)]
pub struct AnnotationError(pub String);

impl<'a> Annotation<'a> {
    /// Parses a label; an empty one is no label.
    pub fn parse(text: &'a str) -> Result<Option<Self>, AnnotationError> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(None);
        }
        if t == "artifact" {
            return Ok(Some(Annotation::Artifact));
        }
        match t.strip_prefix("deterioration:") {
            Some(kind)
                if !kind.is_empty()
                    && kind
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Ok(Some(Annotation::Deterioration(kind)))
            }
            _ => Err(AnnotationError(text.to_owned())),
        }
    }

    /// The simulator's label as an annotation.
    pub fn of_label(label: Label) -> Annotation<'static> {
        match label {
            Label::Deterioration(kind) => Annotation::Deterioration(kind.as_str()),
            Label::Artifact => Annotation::Artifact,
        }
    }
}

impl fmt::Display for Annotation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Annotation::Deterioration(kind) => write!(f, "deterioration:{kind}"),
            Annotation::Artifact => f.write_str("artifact"),
        }
    }
}

/// How notifications are attributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreConfig {
    /// After an episode ends, its own alerts' re-notifications still count as inside it
    /// for this long. Default 5m: as long as NEWS2's default `clear_after`, so an alert
    /// of a real episode can wind down without counting as a nuisance.
    pub grace: Duration,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            grace: Duration::from_secs(300),
        }
    }
}

/// Priorities in index order (low, medium, high).
const PRIORITIES: [Priority; 3] = [Priority::Low, Priority::Medium, Priority::High];

fn pidx(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
    }
}

/// FNV-1a of an alert id: alerts are remembered by this, not by their string.
fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug)]
struct Track {
    patient_id: PatientId,
    scale: Spo2Scale,
    readings: u64,
    first: Timestamp,
    last: Timestamp,
    latest: VitalSet,
    /// The patient's most recent episode, and whether it is still open.
    recent: Option<usize>,
    open: bool,
    /// Alerts (hashed ids) that notified inside the most recent episode.
    owned: HashSet<u64>,
    /// The most recent artifact interval, and whether it is still going on.
    artifact: Option<(Timestamp, Timestamp)>,
    in_artifact: bool,
}

#[derive(Debug)]
struct EpisodeRec {
    track: usize,
    kind: usize,
    start: Timestamp,
    end: Timestamp,
    trigger: Option<Timestamp>,
    first_alarm: Option<(Timestamp, Priority)>,
    first_by_priority: [Option<Timestamp>; 3],
    notifications: u64,
}

/// Per-priority counts of notifications and alerts.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    notifications: u64,
    true_notifications: u64,
    nuisance_artifact: u64,
    alerts: u64,
    true_alerts: u64,
}

/// Scores one profile's alert events against a labelled stream. Feed it every reading
/// ([`Scorer::reading`]) and, after each, the events the engine produced
/// ([`Scorer::event`]), in stream order; then [`Scorer::finish`].
#[derive(Debug)]
pub struct Scorer {
    config: ScoreConfig,
    scales: HashMap<PatientId, Spo2Scale>,
    index: HashMap<PatientId, usize>,
    tracks: Vec<Track>,
    kinds: Vec<String>,
    episodes: Vec<EpisodeRec>,
    tally: [Tally; 3],
    observation_sets: u64,
    readings: u64,
    /// The track most likely asked for next.
    guess: usize,
}

impl Scorer {
    /// A scorer; `patients` gives each patient's SpO2 scale for the standard-of-care
    /// trigger (patients not listed are on scale 1).
    pub fn new(config: ScoreConfig, patients: &[Patient]) -> Self {
        Scorer {
            config,
            scales: patients
                .iter()
                .map(|p| (p.patient_id.clone(), p.spo2_scale))
                .collect(),
            index: HashMap::new(),
            tracks: Vec::new(),
            kinds: Vec::new(),
            episodes: Vec::new(),
            tally: [Tally::default(); 3],
            observation_sets: 0,
            readings: 0,
            guess: 0,
        }
    }

    fn track(&mut self, id: &PatientId) -> usize {
        // Monitors report in turn: the patient after the last one is the likely next, and
        // a string comparison is cheaper than hashing.
        if let Some(t) = self.tracks.get(self.guess)
            && t.patient_id == *id
        {
            self.guess += 1;
            return self.guess - 1;
        }
        if let Some(&i) = self.index.get(id.as_str()) {
            self.guess = i + 1;
            return i;
        }
        let i = self.tracks.len();
        self.tracks.push(Track {
            patient_id: id.clone(),
            scale: self.scales.get(id.as_str()).copied().unwrap_or_default(),
            readings: 0,
            first: Timestamp(i64::MAX),
            last: Timestamp(i64::MIN),
            latest: VitalSet::default(),
            recent: None,
            open: false,
            owned: HashSet::new(),
            artifact: None,
            in_artifact: false,
        });
        self.index.insert(id.clone(), i);
        self.guess = i + 1;
        i
    }

    fn kind(&mut self, kind: &str) -> usize {
        match self.kinds.iter().position(|k| k == kind) {
            Some(k) => k,
            None => {
                self.kinds.push(kind.to_owned());
                self.kinds.len() - 1
            }
        }
    }

    /// One reading (observation set) of the stream with its label, before the events the
    /// engine produced for it.
    pub fn reading(&mut self, obs: &Observation, label: Option<Annotation<'_>>) {
        let i = self.track(&obs.patient_id);
        let kind = match label {
            Some(Annotation::Deterioration(k)) => Some(self.kind(k)),
            _ => None,
        };
        self.observation_sets += 1;
        self.readings += obs.vitals.len() as u64;
        let t = obs.observed_at;
        let tr = &mut self.tracks[i];
        tr.readings += 1;
        tr.first = tr.first.min(t);
        tr.last = tr.last.max(t);
        for (v, x) in obs.vitals.iter() {
            tr.latest.set(v, x);
        }
        match (label, kind) {
            (Some(Annotation::Deterioration(_)), Some(k)) => {
                tr.in_artifact = false;
                let e = match tr.recent {
                    Some(e) if tr.open && self.episodes[e].kind == k => {
                        let ep = &mut self.episodes[e];
                        ep.end = ep.end.max(t);
                        e
                    }
                    _ => {
                        self.episodes.push(EpisodeRec {
                            track: i,
                            kind: k,
                            start: t,
                            end: t,
                            trigger: None,
                            first_alarm: None,
                            first_by_priority: [None; 3],
                            notifications: 0,
                        });
                        tr.recent = Some(self.episodes.len() - 1);
                        tr.open = true;
                        tr.owned.clear();
                        self.episodes.len() - 1
                    }
                };
                let ep = &mut self.episodes[e];
                if ep.trigger.is_none() && standard_of_care_trigger(&tr.latest, tr.scale) {
                    ep.trigger = Some(t);
                }
            }
            (Some(Annotation::Artifact), _) => {
                tr.open = false;
                match tr.artifact.as_mut() {
                    Some(a) if tr.in_artifact => a.1 = a.1.max(t),
                    _ => tr.artifact = Some((t, t)),
                }
                tr.in_artifact = true;
            }
            _ => {
                tr.open = false;
                tr.in_artifact = false;
            }
        }
    }

    /// One alert event, in the order the engine produced it.
    pub fn event(&mut self, e: &AlertEvent) {
        if !e.event.notifies() {
            return;
        }
        let i = self.track(&e.patient_id);
        let t = e.alert_generated_time;
        let p = pidx(e.priority);
        let triggered = e.event == AlertEventKind::Triggered;
        let tally = &mut self.tally[p];
        tally.notifications += 1;
        tally.alerts += u64::from(triggered);
        let tr = &mut self.tracks[i];
        let h = id_hash(e.alert_id.as_str());
        let inside = match tr.recent {
            Some(x) if tr.open && t >= self.episodes[x].start => Some((x, true)),
            Some(x)
                if !tr.open
                    && !triggered
                    && t <= self.episodes[x].end.plus(self.config.grace)
                    && tr.owned.contains(&h) =>
            {
                Some((x, false))
            }
            _ => None,
        };
        match inside {
            Some((x, in_time)) => {
                tally.true_notifications += 1;
                tally.true_alerts += u64::from(triggered);
                tr.owned.insert(h);
                let ep = &mut self.episodes[x];
                ep.notifications += 1;
                if in_time && e.rule != "device_stale" {
                    ep.first_alarm.get_or_insert((t, e.priority));
                    ep.first_by_priority[p].get_or_insert(t);
                }
            }
            None => {
                let from_artifact = tr.in_artifact
                    || tr
                        .artifact
                        .is_some_and(|(a, b)| a <= e.episode_start && e.episode_start <= b);
                tally.nuisance_artifact += u64::from(from_artifact);
            }
        }
    }

    /// The scores.
    pub fn finish(self) -> Report {
        let patient_days: f64 = self
            .tracks
            .iter()
            .filter(|t| t.readings > 0)
            .map(|t| t.last.since(t.first).micros() as f64 / 86_400e6)
            .sum();
        let per_day = |n: u64| {
            if patient_days > 0.0 {
                n as f64 / patient_days
            } else {
                0.0
            }
        };
        let secs = |d: Duration| d.micros() as f64 / 1e6;
        let eps = &self.episodes;
        let detected = eps.iter().filter(|e| e.first_alarm.is_some()).count();
        let mut by_kind: Vec<KindReport> = self
            .kinds
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let of: Vec<&EpisodeRec> = eps.iter().filter(|e| e.kind == k).collect();
                KindReport {
                    kind: name.clone(),
                    episodes: of.len(),
                    detected: of.iter().filter(|e| e.first_alarm.is_some()).count(),
                    time_to_alarm: Delays::of(
                        of.iter()
                            .filter_map(|e| e.first_alarm.map(|(t, _)| secs(t.since(e.start)))),
                    ),
                    time_from_trigger: Delays::of(
                        of.iter()
                            .filter_map(|e| Some(secs(e.first_alarm?.0.since(e.trigger?)))),
                    ),
                }
            })
            .collect();
        by_kind.sort_by(|a, b| a.kind.cmp(&b.kind));
        let total = self.tally.iter().fold(Tally::default(), |a, t| Tally {
            notifications: a.notifications + t.notifications,
            true_notifications: a.true_notifications + t.true_notifications,
            nuisance_artifact: a.nuisance_artifact + t.nuisance_artifact,
            alerts: a.alerts + t.alerts,
            true_alerts: a.true_alerts + t.true_alerts,
        });
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let counts = |t: &Tally| Counts {
            notifications: t.notifications,
            notifications_in_episodes: t.true_notifications,
            nuisance: t.notifications - t.true_notifications,
            nuisance_from_artifacts: t.nuisance_artifact,
            alerts: t.alerts,
            alerts_in_episodes: t.true_alerts,
            notifications_per_patient_day: per_day(t.notifications),
            nuisance_per_patient_day: per_day(t.notifications - t.true_notifications),
            nuisance_from_artifacts_per_patient_day: per_day(t.nuisance_artifact),
            alerts_per_patient_day: per_day(t.alerts),
            nuisance_alerts_per_patient_day: per_day(t.alerts - t.true_alerts),
            notifications_per_episode: ratio(t.true_notifications, eps.len() as u64),
            ppv: ratio(t.true_notifications, t.notifications),
        };
        let by_priority = PRIORITIES
            .iter()
            .map(|&p| {
                let i = pidx(p);
                PriorityReport {
                    priority: p,
                    episodes_detected: eps
                        .iter()
                        .filter(|e| e.first_by_priority[i].is_some())
                        .count(),
                    time_to_alarm: Delays::of(
                        eps.iter()
                            .filter_map(|e| e.first_by_priority[i].map(|t| secs(t.since(e.start)))),
                    ),
                    counts: counts(&self.tally[i]),
                }
            })
            .collect();
        let with_trigger = eps.iter().filter(|e| e.trigger.is_some()).count();
        let before_trigger = eps
            .iter()
            .filter(|e| matches!((e.first_alarm, e.trigger), (Some((a, _)), Some(t)) if a < t))
            .count();
        let episodes = eps
            .iter()
            .map(|e| EpisodeOutcome {
                patient_id: self.tracks[e.track].patient_id.clone(),
                kind: self.kinds[e.kind].clone(),
                start: e.start,
                end: e.end,
                standard_of_care_trigger: e.trigger,
                first_alarm: e.first_alarm.map(|(t, _)| t),
                first_alarm_priority: e.first_alarm.map(|(_, p)| p),
                notifications: e.notifications,
            })
            .collect();
        Report {
            patients: self.tracks.iter().filter(|t| t.readings > 0).count(),
            observation_sets: self.observation_sets,
            readings: self.readings,
            patient_days,
            grace_s: secs(self.config.grace),
            episodes: eps.len(),
            detected,
            sensitivity: ratio(detected as u64, eps.len() as u64),
            by_kind,
            time_to_alarm: Delays::of(
                eps.iter()
                    .filter_map(|e| e.first_alarm.map(|(t, _)| secs(t.since(e.start)))),
            ),
            episodes_with_trigger: with_trigger,
            alarm_before_trigger: before_trigger,
            time_from_trigger: Delays::of(
                eps.iter()
                    .filter_map(|e| Some(secs(e.first_alarm?.0.since(e.trigger?)))),
            ),
            total: counts(&total),
            by_priority,
            episode_list: episodes,
        }
    }
}

/// Whether a nurse charting NEWS2 from these values would call for review: NEWS2 of 5 or
/// more (all parameters known), or any known single parameter scoring 3.
fn standard_of_care_trigger(latest: &VitalSet, scale: Spo2Scale) -> bool {
    let on_oxygen = latest.get(Vital::OnOxygen).is_some_and(|x| x >= 0.5);
    let consciousness = latest
        .get(Vital::Consciousness)
        .and_then(Consciousness::from_code);
    let parts = [
        latest.get(Vital::RespRate).map(news2::resp_rate_points),
        latest
            .get(Vital::Spo2)
            .map(|s| news2::spo2_points(s, on_oxygen, scale)),
        Some(news2::oxygen_points(on_oxygen)),
        latest.get(Vital::Systolic).map(news2::systolic_points),
        latest.get(Vital::HeartRate).map(news2::pulse_points),
        consciousness.map(news2::consciousness_points),
        latest.get(Vital::TempC).map(news2::temperature_points),
    ];
    if parts.contains(&Some(3)) {
        return true;
    }
    let total: Option<u32> = parts.iter().map(|p| p.map(u32::from)).sum();
    total.is_some_and(|t| t >= 5)
}

/// Median, p90 and maximum of a set of delays, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Delays {
    /// How many values.
    pub n: usize,
    /// Middle value (mean of the two middle ones for an even count).
    pub median_s: Option<f64>,
    /// Nearest-rank 90th percentile.
    pub p90_s: Option<f64>,
    /// Largest value.
    pub max_s: Option<f64>,
}

impl Delays {
    /// The statistics of these values.
    pub fn of(values: impl Iterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Delays::default();
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank: the smallest value with at least 90 % of the values at or below it.
        let rank = (0.9 * n as f64).ceil().max(1.0) as usize;
        Delays {
            n,
            median_s: Some(median),
            p90_s: Some(v[rank - 1]),
            max_s: v.last().copied(),
        }
    }
}

/// Notification and alert counts, and the rates derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Counts {
    /// Notifications (triggered, renotified, escalated, inputs_stale).
    pub notifications: u64,
    /// Of which inside an episode.
    pub notifications_in_episodes: u64,
    /// Of which outside every episode.
    pub nuisance: u64,
    /// Nuisance notifications during an artifact or of an alert that began in one.
    pub nuisance_from_artifacts: u64,
    /// Alerts (triggered events: one per alert id).
    pub alerts: u64,
    /// Alerts triggered inside an episode.
    pub alerts_in_episodes: u64,
    /// Notifications per patient-day.
    pub notifications_per_patient_day: f64,
    /// Nuisance notifications per patient-day.
    pub nuisance_per_patient_day: f64,
    /// Nuisance notifications caused by artifacts, per patient-day.
    pub nuisance_from_artifacts_per_patient_day: f64,
    /// Alerts per patient-day.
    pub alerts_per_patient_day: f64,
    /// Alerts triggered outside every episode, per patient-day.
    pub nuisance_alerts_per_patient_day: f64,
    /// Notifications inside episodes per episode: how loud a real deterioration is.
    pub notifications_per_episode: Option<f64>,
    /// Positive predictive value: notifications inside episodes over all notifications.
    pub ppv: Option<f64>,
}

/// Detection of one kind of episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    /// The episode kind (`sepsis`, …).
    pub kind: String,
    /// Episodes of this kind.
    pub episodes: usize,
    /// Of which detected.
    pub detected: usize,
    /// From episode start to the first alarm.
    pub time_to_alarm: Delays,
    /// From the standard-of-care trigger to the first alarm.
    pub time_from_trigger: Delays,
}

/// The same measures for the notifications of one priority.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityReport {
    /// The priority.
    pub priority: Priority,
    /// Episodes with a notification of this priority inside them (up to their end).
    pub episodes_detected: usize,
    /// From episode start to the first alarm of this priority.
    pub time_to_alarm: Delays,
    /// Counts and rates of this priority's notifications.
    #[serde(flatten)]
    pub counts: Counts,
}

/// What happened in one episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeOutcome {
    /// Whose episode.
    pub patient_id: PatientId,
    /// Its kind.
    pub kind: String,
    /// First labelled reading.
    pub start: Timestamp,
    /// Last labelled reading.
    pub end: Timestamp,
    /// First reading at NEWS2 ≥ 5 or a single parameter of 3, if any.
    pub standard_of_care_trigger: Option<Timestamp>,
    /// First clinical notification inside the episode, if any.
    pub first_alarm: Option<Timestamp>,
    /// Its priority.
    pub first_alarm_priority: Option<Priority>,
    /// Notifications inside the episode (grace period included).
    pub notifications: u64,
}

/// The scores of one profile on one labelled stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Patients with at least one reading.
    pub patients: usize,
    /// Observation sets read.
    pub observation_sets: u64,
    /// Readings (one per vital value) read.
    pub readings: u64,
    /// Monitored time: per patient, first to last reading, summed, in days.
    pub patient_days: f64,
    /// The grace period after an episode, seconds.
    pub grace_s: f64,
    /// Deterioration episodes.
    pub episodes: usize,
    /// Of which detected.
    pub detected: usize,
    /// Detected over episodes.
    pub sensitivity: Option<f64>,
    /// Per episode kind.
    pub by_kind: Vec<KindReport>,
    /// From episode start to the first alarm (detected episodes).
    pub time_to_alarm: Delays,
    /// Episodes that reached the standard-of-care trigger.
    pub episodes_with_trigger: usize,
    /// Episodes where the first alarm came before the standard-of-care trigger.
    pub alarm_before_trigger: usize,
    /// From the standard-of-care trigger to the first alarm (detected episodes with a
    /// trigger; negative: the alarm came first).
    pub time_from_trigger: Delays,
    /// All notifications and alerts.
    pub total: Counts,
    /// The same, per priority (low, medium, high).
    pub by_priority: Vec<PriorityReport>,
    /// Every episode.
    pub episode_list: Vec<EpisodeOutcome>,
}

/// One engine and its scorer on one labelled stream: the evaluation loop, shared by the
/// simulator and recorded files.
///
/// It drives the engine as `replay` does: the clock is the stream's own ([`StreamClock`]
/// with the lateness window as its jump), the engine is ticked once a second of it, and
/// every event goes to the scorer.
#[derive(Debug)]
pub struct Evaluation {
    engine: Engine,
    scorer: Scorer,
    findings: Findings,
    clock: StreamClock,
    now: Timestamp,
    last_tick: Timestamp,
    late: u64,
    rejected: u64,
}

/// Ticks come once a second of the stream clock, as in `replay`.
const TICK: Duration = Duration::from_secs(1);

impl Evaluation {
    /// An evaluation of `engine`; `lateness` is the engine's lateness window (`time.lateness`).
    pub fn new(engine: Engine, scorer: Scorer, lateness: Duration) -> Self {
        Evaluation {
            engine,
            scorer,
            findings: Findings::default(),
            clock: StreamClock::new(lateness),
            now: Timestamp(i64::MIN),
            last_tick: Timestamp(i64::MIN),
            late: 0,
            rejected: 0,
        }
    }

    /// Evaluates one labelled observation set.
    pub fn feed(&mut self, obs: &Observation, label: Option<Annotation<'_>>) {
        self.scorer.reading(obs, label);
        self.clock.offer(obs.observed_at);
        self.now = self.now.max(self.clock.now().unwrap_or(obs.observed_at));
        match self.engine.process(obs, self.now, &mut self.findings) {
            Processed::Evaluated => {}
            Processed::Late => self.late += 1,
            Processed::Rejected(_) => self.rejected += 1,
        }
        if self.now.since(self.last_tick) >= TICK {
            self.engine.tick(self.now, &mut self.findings);
            self.last_tick = self.now;
        }
        for e in &self.findings.events {
            self.scorer.event(e);
        }
        self.findings.clear();
    }

    /// Observation sets the engine did not evaluate: (later than the lateness window,
    /// refused at a state bound).
    pub fn skipped(&self) -> (u64, u64) {
        (self.late, self.rejected)
    }

    /// The scores.
    pub fn finish(self) -> Report {
        self.scorer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertId;
    use crate::alert::AlertState;
    use crate::model::DeviceId;
    use crate::simulate::{SimConfig, Simulator};

    const T0: i64 = 1_767_225_600;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_secs(T0 + s)
    }

    /// A stable reading: NEWS2 0.
    fn calm(p: &str, s: i64) -> Observation {
        let mut v = VitalSet::default();
        for (vital, x) in [
            (Vital::HeartRate, 70.0),
            (Vital::RespRate, 14.0),
            (Vital::Spo2, 97.0),
            (Vital::TempC, 37.0),
            (Vital::Systolic, 120.0),
            (Vital::Consciousness, 0.0),
            (Vital::OnOxygen, 0.0),
        ] {
            v.set(vital, x);
        }
        Observation {
            patient_id: PatientId(p.into()),
            device_id: DeviceId(format!("m{p}").into()),
            observed_at: at(s),
            ingested_at: at(s),
            vitals: v,
        }
    }

    fn with(mut o: Observation, vital: Vital, x: f64) -> Observation {
        o.vitals.set(vital, x);
        o
    }

    fn ev(
        p: &str,
        id: &str,
        kind: AlertEventKind,
        prio: Priority,
        s: i64,
        start: i64,
    ) -> AlertEvent {
        AlertEvent {
            alert_id: AlertId(id.into()),
            event: kind,
            state: AlertState::Triggered,
            rule: "threshold".into(),
            rule_key: "threshold:heart_rate:1".into(),
            priority: prio,
            patient_id: PatientId(p.into()),
            patient: Default::default(),
            vital: None,
            value: None,
            bp: None,
            heart_beat: None,
            news2_score: None,
            ref_id: None,
            ref_version: None,
            alert_message: "".into(),
            input_message_time: at(s),
            alert_generated_time: at(s),
            episode_start: at(start),
            device_id: None,
            acknowledged_by: None,
        }
    }

    const SEPSIS: Option<Annotation<'static>> = Some(Annotation::Deterioration("sepsis"));

    /// One patient over one day (0..86400 s), an episode labelled on 1000..=1999 s with the
    /// standard-of-care trigger at 1500 s (respiration 26: a single parameter of 3), an
    /// artifact at 5000..=5004 s; a second patient stable all day.
    fn day(events: &[AlertEvent]) -> Report {
        let mut s = Scorer::new(ScoreConfig::default(), &[]);
        let mut pending: Vec<&AlertEvent> = events.iter().collect();
        pending.sort_by_key(|e| e.alert_generated_time);
        let mut next = 0;
        for sec in (0..=86_400).step_by(1) {
            for p in ["1", "2"] {
                let mut o = calm(p, sec);
                let mut label = None;
                if p == "1" && (1000..2000).contains(&sec) {
                    label = SEPSIS;
                    if sec >= 1500 {
                        o = with(o, Vital::RespRate, 26.0);
                    }
                }
                if p == "1" && (5000..5005).contains(&sec) {
                    label = Some(Annotation::Artifact);
                    o = with(o, Vital::Spo2, 60.0);
                }
                s.reading(&o, label);
            }
            while next < pending.len() && pending[next].alert_generated_time <= at(sec) {
                s.event(pending[next]);
                next += 1;
            }
        }
        s.finish()
    }

    #[test]
    fn annotations_parse_strictly() {
        assert_eq!(Annotation::parse(""), Ok(None));
        assert_eq!(
            Annotation::parse("artifact"),
            Ok(Some(Annotation::Artifact))
        );
        assert_eq!(
            Annotation::parse("deterioration:respiratory_failure"),
            Ok(Some(Annotation::Deterioration("respiratory_failure")))
        );
        for bad in [
            "deterioration:",
            "episode:sepsis",
            "Artifact",
            "deterioration:Sepsis",
        ] {
            assert!(Annotation::parse(bad).is_err(), "{bad}");
        }
        // The simulator's labels are annotations, written and read back unchanged.
        for l in [
            Label::Artifact,
            Label::Deterioration(crate::simulate::EpisodeKind::Bradycardia),
        ] {
            let text = l.to_string();
            assert_eq!(Annotation::parse(&text), Ok(Some(Annotation::of_label(l))));
        }
    }

    #[test]
    fn labels_survive_the_canonical_format() {
        use crate::codec::{decode_annotated, encode_canonical};
        let o = with(calm("7", 12), Vital::Diastolic, 70.0);
        for label in [None, Some("artifact"), Some("deterioration:sepsis")] {
            let mut line = String::new();
            encode_canonical(&o, label, &mut line);
            let (back, text) = decode_annotated(line.as_bytes(), at(0)).unwrap();
            assert_eq!(back.vitals, o.vitals);
            assert_eq!(back.observed_at, o.observed_at);
            assert_eq!(text.as_deref(), label);
        }
        let err = decode_annotated(br#"{"patient_id":"1","vitals":{"spo2":130}}"#, at(0));
        assert!(err.is_err(), "validated like any record");
    }

    #[test]
    fn a_quiet_day_with_one_missed_episode() {
        let r = day(&[]);
        assert_eq!(r.patients, 2);
        assert!((r.patient_days - 2.0).abs() < 1e-9, "{}", r.patient_days);
        assert_eq!((r.episodes, r.detected, r.sensitivity), (1, 0, Some(0.0)));
        assert_eq!(r.episodes_with_trigger, 1);
        assert_eq!(r.episode_list[0].start, at(1000));
        assert_eq!(r.episode_list[0].end, at(1999));
        assert_eq!(r.episode_list[0].standard_of_care_trigger, Some(at(1500)));
        assert_eq!(r.total.notifications, 0);
        assert_eq!(r.total.ppv, None);
        assert_eq!(r.time_to_alarm, Delays::default());
    }

    #[test]
    fn notifications_are_attributed_to_episodes_grace_and_artifacts() {
        use AlertEventKind::*;
        use Priority::*;
        let events = [
            // Before the episode: a nuisance.
            ev("1", "a", Triggered, Low, 900, 890),
            // Inside: detection at 1530 (30 s after the trigger), re-notified, escalated.
            ev("1", "b", Triggered, Medium, 1530, 1510),
            ev("1", "b", Renotified, Medium, 1650, 1510),
            ev("1", "b", Escalated, High, 1700, 1510),
            // Not a notification.
            ev("1", "b", Resolved, High, 1800, 1510),
            // After the end, within the 5-minute grace: the episode's own alert is inside,
            // a new alert is not, and neither is a re-notification after the grace.
            ev("1", "c", Triggered, Medium, 1900, 1890),
            ev("1", "c", Renotified, Medium, 2100, 1890),
            ev("1", "d", Triggered, Low, 2100, 2095),
            ev("1", "c", Renotified, Medium, 2400, 1890),
            // The artifact: its alert and a re-notification of it later.
            ev("1", "e", Triggered, High, 5003, 5000),
            ev("1", "e", Renotified, High, 5200, 5000),
            // The stable patient.
            ev("2", "f", Triggered, Low, 40_000, 39_990),
        ];
        let r = day(&events);
        assert_eq!((r.episodes, r.detected), (1, 1));
        let d = r.time_to_alarm;
        assert_eq!((d.n, d.median_s, d.max_s), (1, Some(530.0), Some(530.0)));
        assert_eq!(r.time_from_trigger.median_s, Some(30.0));
        assert_eq!(r.alarm_before_trigger, 0);
        let t = r.total;
        assert_eq!(t.notifications, 11);
        assert_eq!(t.notifications_in_episodes, 5, "b ×3, c ×2");
        assert_eq!(t.nuisance, 6);
        assert_eq!(t.nuisance_from_artifacts, 2);
        assert_eq!((t.alerts, t.alerts_in_episodes), (6, 2));
        assert!((t.nuisance_per_patient_day - 3.0).abs() < 1e-9);
        assert!((t.notifications_per_patient_day - 5.5).abs() < 1e-9);
        assert_eq!(t.notifications_per_episode, Some(5.0));
        assert_eq!(t.ppv, Some(5.0 / 11.0));
        let [low, medium, high] = [0, 1, 2].map(|i| &r.by_priority[i]);
        assert_eq!(low.counts.notifications, 3);
        assert_eq!(low.counts.nuisance, 3);
        assert_eq!(low.episodes_detected, 0);
        assert_eq!(medium.counts.notifications, 5);
        assert_eq!(medium.counts.nuisance, 1, "c re-notified after the grace");
        assert_eq!(medium.episodes_detected, 1);
        assert_eq!(medium.time_to_alarm.median_s, Some(530.0));
        assert_eq!(high.counts.notifications, 3);
        assert_eq!(high.counts.nuisance, 2, "the artifact");
        assert_eq!(high.counts.ppv, Some(1.0 / 3.0));
        assert_eq!(high.episodes_detected, 1, "the escalation");
        assert_eq!(r.episode_list[0].notifications, 5);
        assert_eq!(r.episode_list[0].first_alarm_priority, Some(Medium));
    }

    #[test]
    fn an_alarm_before_the_trigger_counts_negative_and_technical_alarms_detect_nothing() {
        use AlertEventKind::*;
        let mut stale = ev("1", "s", Triggered, Priority::Medium, 1100, 1040);
        stale.rule = "device_stale".into();
        let r = day(&[stale, ev("1", "b", Triggered, Priority::Low, 1400, 1390)]);
        assert_eq!(r.detected, 1);
        assert_eq!(
            r.time_to_alarm.median_s,
            Some(400.0),
            "the stale alarm is not it"
        );
        assert_eq!(r.time_from_trigger.median_s, Some(-100.0));
        assert_eq!(r.alarm_before_trigger, 1);
        assert_eq!(r.total.notifications_in_episodes, 2);
    }

    #[test]
    fn episodes_split_on_a_gap_or_a_new_kind_and_stay_open_until_the_next_reading() {
        let mut s = Scorer::new(ScoreConfig::default(), &[]);
        let brady = Some(Annotation::Deterioration("bradycardia"));
        let labels = [SEPSIS, SEPSIS, None, SEPSIS, brady, brady];
        for (i, l) in labels.into_iter().enumerate() {
            s.reading(&calm("1", i as i64 * 10), l);
        }
        // After the last episode's end (50 s), with no reading since: still open.
        s.event(&ev(
            "1",
            "x",
            AlertEventKind::Triggered,
            Priority::Low,
            55,
            55,
        ));
        s.reading(&calm("1", 60), None);
        s.event(&ev(
            "1",
            "y",
            AlertEventKind::Triggered,
            Priority::Low,
            61,
            61,
        ));
        let r = s.finish();
        assert_eq!(r.episodes, 3);
        let spans: Vec<(String, i64, i64)> = r
            .episode_list
            .iter()
            .map(|e| (e.kind.clone(), e.start.0, e.end.0))
            .collect();
        let us = |s: i64| at(s).0;
        assert_eq!(
            spans,
            [
                ("sepsis".to_owned(), us(0), us(10)),
                ("sepsis".to_owned(), us(30), us(30)),
                ("bradycardia".to_owned(), us(40), us(50)),
            ]
        );
        assert_eq!(r.detected, 1);
        assert_eq!(r.by_kind.len(), 2);
        assert_eq!(r.by_kind[0].kind, "bradycardia");
        assert_eq!(r.by_kind[0].detected, 1);
        assert_eq!(r.total.nuisance, 1, "a new alert after the end");
    }

    #[test]
    fn the_trigger_needs_news2_five_or_a_single_three() {
        let calm_set = calm("1", 0).vitals;
        assert!(!standard_of_care_trigger(&calm_set, Spo2Scale::Scale1));
        // HR 115 (2) + RR 22 (2) = 4: not yet; SpO2 95 (1) makes 5.
        let four = calm_set
            .with(Vital::HeartRate, 115.0)
            .with(Vital::RespRate, 22.0);
        assert!(!standard_of_care_trigger(&four, Spo2Scale::Scale1));
        assert!(standard_of_care_trigger(
            &four.with(Vital::Spo2, 95.0),
            Spo2Scale::Scale1
        ));
        // A single 3 with the rest unknown.
        let only = VitalSet::default().with(Vital::HeartRate, 40.0);
        assert!(standard_of_care_trigger(&only, Spo2Scale::Scale1));
        // SpO2 89 is a 3 on scale 1, a 0 on scale 2.
        let low = calm_set.with(Vital::Spo2, 89.0);
        assert!(standard_of_care_trigger(&low, Spo2Scale::Scale1));
        assert!(!standard_of_care_trigger(&low, Spo2Scale::Scale2));
    }

    #[test]
    fn percentiles() {
        let d = Delays::of([5.0, 1.0, 3.0, 2.0].into_iter());
        assert_eq!(
            (d.n, d.median_s, d.p90_s, d.max_s),
            (4, Some(2.5), Some(5.0), Some(5.0))
        );
        let d = Delays::of((1..=10).map(f64::from));
        assert_eq!((d.median_s, d.p90_s), (Some(5.5), Some(9.0)));
        let d = Delays::of((1..=11).map(f64::from));
        assert_eq!((d.median_s, d.p90_s), (Some(6.0), Some(10.0)));
    }

    #[test]
    fn next_into_is_next_observation_with_its_label() {
        let config = SimConfig {
            patients: 7,
            deterioration_fraction: 0.5,
            artifact_rate_per_hour: 30.0,
            ..SimConfig::default()
        };
        let mut a = Simulator::new(config.clone());
        let mut b = Simulator::new(config);
        let mut o = Observation {
            patient_id: PatientId(Default::default()),
            device_id: DeviceId(Default::default()),
            observed_at: Timestamp(0),
            ingested_at: Timestamp(0),
            vitals: VitalSet::default(),
        };
        let mut labels = 0;
        for _ in 0..7 * 3600 {
            let want = a.next_observation();
            let label = b.next_into(&mut o);
            assert_eq!(o, want);
            let idx = a.patient_index(&want.patient_id).unwrap();
            assert_eq!(label, a.label_at(idx, want.observed_at));
            labels += usize::from(label.is_some());
        }
        assert!(labels > 0);
    }
}
