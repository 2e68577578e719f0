//! Clinical rules and their configuration.
//!
//! The engine applies these to every observation: threshold bands from the reference table
//! (the classic rule), fixed limit rules (SpO2 desaturation), NEWS2, and the stale-device
//! technical alarm. The `[rules]` section of the config file deserializes into
//! [`RulesConfig`]; each field's doc comment is its user documentation.

pub mod news2;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::Priority;
use crate::model::{Duration, Vital};

/// Which behaviour the engine follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Reproduces the classic design one for one: every abnormal reading alerts at once,
    /// no persistence, no deduplication, no NEWS2, no limit or stale-device rules.
    Classic,
    /// Threshold bands with persistence, hysteresis and deduplication, plus NEWS2,
    /// limit rules and the stale-device alarm.
    #[default]
    Standard,
}

impl Profile {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Classic => "classic",
            Profile::Standard => "standard",
        }
    }
}

/// Rule settings (`[rules]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// `standard` (default) or `classic`. `classic` ignores every other rule setting.
    pub profile: Profile,
    /// Re-notify an alert that is still abnormal and unacknowledged after this long.
    /// Default 2m: the alarm-fatigue literature's usual re-alarm interval (range 1–10 min).
    pub renotify_after: Duration,
    /// Threshold-band rule (the classic reference table).
    pub thresholds: ThresholdRuleConfig,
    /// NEWS2 early-warning score.
    pub news2: News2Config,
    /// Technical alarm when a device goes silent.
    pub stale_device: StaleDeviceConfig,
    /// How much per-patient and per-device state the engine keeps.
    pub state: StateConfig,
    /// Fixed limit rules, e.g. SpO2 below 90 % for 15 s. Default: SpO2 < 90 % for 15 s
    /// (medium) for patients on SpO2 scale 1, < 86 % for 15 s for patients on scale 2
    /// (their prescribed target is 88–92 %): a 15 s delay cuts SpO2 alarms by 60–70 %.
    /// These depend on the patient's SpO2 scale, which a threshold band cannot. The
    /// desaturation alarm (< 80 %, high, for everyone) is a band of the standard
    /// reference table, with the bands' 10 s persistence: without a delay it paged for
    /// every few-second probe dropout (144 high-priority nuisance alarms per patient-day
    /// on the simulator, 6 dropouts an hour).
    pub limits: Vec<LimitRule>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            profile: Profile::Standard,
            renotify_after: Duration::from_secs(120),
            thresholds: ThresholdRuleConfig::default(),
            news2: News2Config::default(),
            stale_device: StaleDeviceConfig::default(),
            state: StateConfig::default(),
            limits: vec![
                LimitRule {
                    name: "spo2_low".into(),
                    vital: Vital::Spo2,
                    below: Some(90.0),
                    above: None,
                    priority: Priority::Medium,
                    persistence: Duration::from_secs(15),
                    hysteresis: 1.0,
                    message: "SpO2 below 90%".into(),
                    scale: Some(1),
                },
                LimitRule {
                    name: "spo2_low_scale2".into(),
                    vital: Vital::Spo2,
                    below: Some(86.0),
                    above: None,
                    priority: Priority::Medium,
                    persistence: Duration::from_secs(15),
                    hysteresis: 1.0,
                    message: "SpO2 below 86% (SpO2 scale 2, target 88-92%)".into(),
                    scale: Some(2),
                },
            ],
        }
    }
}

/// The threshold-band rule (`[rules.thresholds]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdRuleConfig {
    /// Check readings against the catalog's threshold bands. Default true.
    ///
    /// A value between two bands of the table (69.5 with bands 0–69 and 70–78) is
    /// rounded to the table's resolution, the nearest whole number (halves away from
    /// zero), and matched again, so no reading falls through a gap the table did not mean
    /// to leave. (The classic profile does not round: like the classic `between`, such a
    /// value matches no band and is reported as unclassified.)
    pub enabled: bool,
    /// A reading must stay in an alerting band this long before the alert fires.
    /// Default 10s: movement and probe artifacts rarely last longer, real changes do. At
    /// 0s every few-second SpO2 probe dropout is a high-priority desaturation alarm.
    pub persistence: Duration,
    /// An alert clears only when the value is back in a normal band by this margin, per
    /// vital (canonical units). Stops an alarm flapping on a value that hovers at an edge.
    pub hysteresis: BTreeMap<String, f64>,
}

impl Default for ThresholdRuleConfig {
    fn default() -> Self {
        ThresholdRuleConfig {
            enabled: true,
            persistence: Duration::from_secs(10),
            hysteresis: [
                ("heart_rate", 3.0),
                ("resp_rate", 2.0),
                ("spo2", 1.0),
                ("temp_c", 0.2),
                ("systolic", 5.0),
                ("diastolic", 5.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }
}

impl ThresholdRuleConfig {
    /// Hysteresis margin per vital index.
    pub fn margins(&self) -> [f64; crate::model::VITAL_COUNT] {
        let mut m = [0.0; crate::model::VITAL_COUNT];
        for (k, v) in &self.hysteresis {
            if let Some(vital) = Vital::from_name(k) {
                m[vital.index()] = *v;
            }
        }
        m
    }
}

/// NEWS2 settings (`[rules.news2]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct News2Config {
    /// Score every complete observation set. Default true.
    pub enabled: bool,
    /// A parameter older than this does not count towards a complete set. Default 1h:
    /// consciousness and temperature are charted by hand far less often than monitors
    /// stream, but an hour-old value is no longer the patient's state. When a parameter of
    /// an active NEWS2 alert goes stale, the alert stays open and an `inputs_stale` event
    /// asks for a full set of observations.
    pub max_observation_age: Duration,
    /// The score must stay at or above the alarm level this long before it alarms.
    /// Default 30s: a monitor streams a set every second, and one noisy parameter flips a
    /// score of 4 to 5 and back; a real deterioration lasts minutes.
    pub persistence: Duration,
    /// Dips below the alarm level no longer than this do not restart `persistence`.
    /// Default 30s: near the trigger a noisy score flickers between 4 and 5 from one
    /// second to the next; a real deterioration keeps coming back within seconds, while
    /// a stable patient's lone noisy score does not come back for minutes. Measured on
    /// the simulator (`vitalwatch evaluate`): with no tolerance the alarm comes minutes
    /// after the first reading at the trigger, with 30 s it comes within a minute.
    pub tolerance: Duration,
    /// An active NEWS2 alert resolves only after the score has stayed below the alarm
    /// level this long. Default 5m: a score hovering at the trigger keeps one alert open
    /// instead of paging on every crossing.
    pub clear_after: Duration,
    /// Supplemental oxygen is a therapy state, charted when it changes: the latest report
    /// holds for this long, whatever `max_observation_age` says. Default 12h.
    pub oxygen_status_max_age: Duration,
    /// What an unknown oxygen status (never reported, or older than
    /// `oxygen_status_max_age`) means: `air` (default: score it as room air, and say so
    /// in the alert message, "oxygen status unknown, scored as air") or `incomplete`
    /// (no score until a device or a nurse reports it).
    pub unknown_oxygen: UnknownOxygen,
}

/// What an unknown oxygen status means for NEWS2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownOxygen {
    /// Score as room air, and mark the score as assumed.
    #[default]
    Air,
    /// The observation set is incomplete: no score.
    Incomplete,
}

impl Default for News2Config {
    fn default() -> Self {
        News2Config {
            enabled: true,
            max_observation_age: Duration::from_secs(3600),
            persistence: Duration::from_secs(30),
            tolerance: Duration::from_secs(30),
            clear_after: Duration::from_secs(300),
            oxygen_status_max_age: Duration::from_secs(12 * 3600),
            unknown_oxygen: UnknownOxygen::Air,
        }
    }
}

/// Bounds on engine state (`[rules.state]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Forget a patient or device after this long without a reading (on the pipeline's
    /// clock). Their open alerts stay open, in the alert store and the engine, stop
    /// re-notifying, and carry on with the next reading. Default 1h: as long as
    /// `news2.max_observation_age`, so nothing evicted could still count.
    pub evict_after: Duration,
    /// Most patients tracked at once. A reading of a new patient beyond it is a dead
    /// letter (counted), not memory growth. Default 200000.
    pub max_patients: usize,
    /// Most devices tracked at once, likewise. Default 200000.
    pub max_devices: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            evict_after: Duration::from_secs(3600),
            max_patients: 200_000,
            max_devices: 200_000,
        }
    }
}

/// The stale-device technical alarm (`[rules.stale_device]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaleDeviceConfig {
    /// Raise a technical alarm when a device is silent. Default true.
    pub enabled: bool,
    /// Silence longer than this alarms. Default 60s: bedside monitors report every
    /// 1–5 s, so a minute of silence is a disconnected lead or a dead gateway.
    pub after: Duration,
    /// Priority of the alarm. Default medium: an unmonitored patient is a delayed harm.
    pub priority: Priority,
}

impl Default for StaleDeviceConfig {
    fn default() -> Self {
        StaleDeviceConfig {
            enabled: true,
            after: Duration::from_secs(60),
            priority: Priority::Medium,
        }
    }
}

/// A fixed limit on one vital (`[[rules.limits]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Rule name, unique; part of the alert's rule key.
    pub name: String,
    /// Vital it watches (`spo2`, `heart_rate`, ...).
    pub vital: Vital,
    /// Alarm when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Alarm when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Alarm priority.
    pub priority: Priority,
    /// How long the condition must hold before it alarms (`"0s"` for at once).
    pub persistence: Duration,
    /// Clears only when the value is back past the limit by this margin.
    #[serde(default)]
    pub hysteresis: f64,
    /// Alert message.
    pub message: String,
    /// Only for patients on this NEWS2 SpO2 scale (1 or 2; patients not in the catalog
    /// are on scale 1). Absent: every patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u8>,
}

impl LimitRule {
    /// Whether a value breaches the limit.
    pub fn breached(&self, v: f64) -> bool {
        self.below.is_some_and(|b| v < b) || self.above.is_some_and(|a| v > a)
    }

    /// Whether the rule applies to a patient on this SpO2 scale.
    pub fn applies_to(&self, scale: crate::model::Spo2Scale) -> bool {
        match self.scale {
            None => true,
            Some(1) => scale == crate::model::Spo2Scale::Scale1,
            Some(_) => scale == crate::model::Spo2Scale::Scale2,
        }
    }

    /// Whether a value is back inside by the hysteresis margin.
    pub fn cleared(&self, v: f64) -> bool {
        self.below.is_none_or(|b| v >= b + self.hysteresis)
            && self.above.is_none_or(|a| v <= a - self.hysteresis)
    }
}

impl RulesConfig {
    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.renotify_after < Duration::from_secs(10) {
            p.push(format!(
                "rules.renotify_after = {} is too short (minimum 10s): it would re-page every few seconds, the alarm fatigue vitalwatch exists to stop",
                self.renotify_after
            ));
        }
        for k in self.thresholds.hysteresis.keys() {
            if Vital::from_name(k).is_none() {
                p.push(format!("rules.thresholds.hysteresis: unknown vital {k:?}"));
            }
        }
        for (k, v) in &self.thresholds.hysteresis {
            if !(v.is_finite() && *v >= 0.0) {
                p.push(format!(
                    "rules.thresholds.hysteresis.{k} = {v} must be 0 or more"
                ));
            }
        }
        if self.stale_device.enabled && self.stale_device.after < Duration::from_secs(1) {
            p.push("rules.stale_device.after must be at least 1s".into());
        }
        if self.news2.clear_after > self.state.evict_after {
            p.push(format!(
                "rules.news2.clear_after = {} is longer than rules.state.evict_after = {}",
                self.news2.clear_after, self.state.evict_after
            ));
        }
        if self.state.evict_after < self.news2.max_observation_age {
            p.push(format!(
                "rules.state.evict_after = {} is shorter than rules.news2.max_observation_age = {}: evicted vitals would still count towards NEWS2",
                self.state.evict_after, self.news2.max_observation_age
            ));
        }
        if self.stale_device.enabled && self.state.evict_after <= self.stale_device.after {
            p.push(format!(
                "rules.state.evict_after = {} must be longer than rules.stale_device.after = {}: a silent device would be forgotten before it alarms",
                self.state.evict_after, self.stale_device.after
            ));
        }
        for (key, n) in [
            ("max_patients", self.state.max_patients),
            ("max_devices", self.state.max_devices),
        ] {
            if n == 0 {
                p.push(format!("rules.state.{key} must be at least 1"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, l) in self.limits.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                p.push(format!(
                    "rules.limits[{i}]: name {:?} is used twice",
                    l.name
                ));
            }
            if l.below.is_none() && l.above.is_none() {
                p.push(format!(
                    "rules.limits[{i}] ({}): set `below`, `above` or both",
                    l.name
                ));
            }
            if l.scale.is_some_and(|s| s != 1 && s != 2) {
                p.push(format!(
                    "rules.limits[{i}] ({}): scale must be 1 or 2",
                    l.name
                ));
            }
            if !(l.hysteresis.is_finite() && l.hysteresis >= 0.0) {
                p.push(format!(
                    "rules.limits[{i}] ({}): hysteresis must be 0 or more",
                    l.name
                ));
            }
        }
        p
    }
}
