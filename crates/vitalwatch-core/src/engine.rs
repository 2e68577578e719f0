//! The alert engine: per-patient state plus rules, observations in, alert events out.
//!
//! Sits between the codecs and every sink. [`Engine::process`] takes one observation set and
//! the current time (a parameter: this crate never reads a clock), updates the patient's
//! latest vitals, applies the rules of the configured [`Profile`], and appends alert
//! lifecycle events and unclassified readings to a caller-owned [`Findings`] buffer, so the
//! hot path allocates nothing for a normal reading. [`Engine::tick`] drives time-based
//! behaviour (stale devices, re-notification) and [`Engine::acknowledge`] the lifecycle.
//!
//! Every condition goes through one state machine ([`Condition::observe`]): pending while
//! its persistence time runs, active once it fires (one active alert per patient and rule
//! key: deduplication), cleared only when the value is back inside by the hysteresis
//! margin.

use std::collections::HashMap;
use std::sync::Arc;

use crate::alert::{AlertEvent, AlertEventKind, AlertPatient, AlertState, Priority, alert_id};
use crate::model::{
    Consciousness, DeviceId, Duration, Observation, Patient, PatientId, Timestamp, Unclassified,
    UnclassifiedReason, VITAL_COUNT, Vital,
};
use crate::reference::{ThresholdBand, ThresholdTable, match_band};
use crate::rules::news2::{self, News2Input};
use crate::rules::{Profile, RulesConfig};

/// What one call to the engine produced. Reuse it across calls (call [`Findings::clear`]).
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Alert lifecycle events, in the order they happened.
    pub events: Vec<AlertEvent>,
    /// Readings that could not be classified against the reference data.
    pub unclassified: Vec<Unclassified>,
}

impl Findings {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.events.clear();
        self.unclassified.clear();
    }
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No active alert has this id (never existed, or already resolved).
    #[error("no active alert with id {0}")]
    NotActive(String),
    /// The alert was already acknowledged.
    #[error("alert {0} is already acknowledged")]
    AlreadyAcknowledged(String),
}

#[derive(Debug, Clone, PartialEq)]
enum RuleKey {
    Band { vital: Vital, ref_id: u32 },
    Limit(usize),
    News2,
}

#[derive(Debug, Clone)]
struct Active {
    alert_id: String,
    episode_start: Timestamp,
    priority: Priority,
    state: AlertState,
    last_notified: Timestamp,
}

#[derive(Debug, Clone)]
struct Condition {
    key: RuleKey,
    pending_since: Option<Timestamp>,
    active: Option<Active>,
}

/// What a condition did on one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Nothing,
    Triggered,
    Resolved,
}

impl Condition {
    /// The one state machine every rule shares: persistence, dedup, hysteresis.
    ///
    /// `abnormal`: the rule's condition holds now. `cleared`: the value is back inside by the
    /// hysteresis margin (only consulted when not abnormal).
    fn observe(
        &mut self,
        abnormal: bool,
        cleared: bool,
        t: Timestamp,
        persistence: Duration,
    ) -> Transition {
        if abnormal {
            if self.active.is_some() {
                return Transition::Nothing;
            }
            let since = *self.pending_since.get_or_insert(t);
            if t.since(since) >= persistence {
                return Transition::Triggered;
            }
            Transition::Nothing
        } else {
            // Persistence needs the condition to hold without a break.
            self.pending_since = None;
            if self.active.is_some() && cleared {
                return Transition::Resolved;
            }
            Transition::Nothing
        }
    }

    fn is_idle(&self) -> bool {
        self.pending_since.is_none() && self.active.is_none()
    }
}

#[derive(Debug)]
struct PatientState {
    info: PatientInfo,
    conditions: Vec<Condition>,
}

/// What is known about a patient, apart from their alert conditions (kept apart so a
/// condition can change while the rest is read).
#[derive(Debug)]
struct PatientInfo {
    patient: Option<Arc<Patient>>,
    /// Bands that apply to this patient, per vital (age-filtered or the patient's overrides).
    bands: Vec<Vec<ThresholdBand>>,
    latest: [f64; VITAL_COUNT],
    latest_at: [Timestamp; VITAL_COUNT],
}

#[derive(Debug)]
struct DeviceState {
    patient_id: PatientId,
    last_seen: Timestamp,
    active: Option<Active>,
}

/// The alert engine. One instance owns the state of the patients routed to it.
#[derive(Debug)]
pub struct Engine {
    rules: RulesConfig,
    margins: [f64; VITAL_COUNT],
    table: ThresholdTable,
    /// Which vitals the table has any band for (else a vital is not band-checked).
    table_vitals: [bool; VITAL_COUNT],
    directory: HashMap<PatientId, Arc<Patient>>,
    states: HashMap<PatientId, PatientState>,
    devices: HashMap<DeviceId, DeviceState>,
}

/// Everything an event needs besides the transition itself.
struct EventContext<'a> {
    patient_id: &'a PatientId,
    patient: Option<&'a Patient>,
    latest: &'a [f64; VITAL_COUNT],
    observed_at: Timestamp,
    now: Timestamp,
    device: Option<&'a DeviceId>,
    /// Threshold table version, recorded with the band that fired.
    version: u32,
}

impl<'a> EventContext<'a> {
    /// The context of an event caused by an observation.
    fn of_observation(
        obs: &'a Observation,
        info: &'a PatientInfo,
        now: Timestamp,
        version: u32,
    ) -> Self {
        EventContext {
            patient_id: &obs.patient_id,
            patient: info.patient.as_deref(),
            latest: &info.latest,
            observed_at: obs.observed_at,
            now,
            device: Some(&obs.device_id),
            version,
        }
    }
}

struct EventDetail<'a> {
    rule: &'static str,
    rule_key: String,
    priority: Priority,
    vital: Option<Vital>,
    value: Option<f64>,
    band: Option<&'a ThresholdBand>,
    news2_score: Option<u32>,
    message: String,
}

impl Engine {
    /// A new engine with these rules and reference data.
    pub fn new(rules: RulesConfig, patients: Vec<Patient>, table: ThresholdTable) -> Self {
        let mut e = Engine {
            margins: rules.thresholds.margins(),
            rules,
            table: ThresholdTable::default(),
            table_vitals: [false; VITAL_COUNT],
            directory: HashMap::new(),
            states: HashMap::new(),
            devices: HashMap::new(),
        };
        e.load_reference(patients, table);
        e
    }

    /// Replaces the reference data (hot reload): patient state and active alerts are kept,
    /// each patient's bands are recompiled.
    pub fn load_reference(&mut self, patients: Vec<Patient>, table: ThresholdTable) {
        self.directory = patients
            .into_iter()
            .map(|p| (p.patient_id.clone(), Arc::new(p)))
            .collect();
        for v in Vital::ALL {
            self.table_vitals[v.index()] = table.has_vital(v);
        }
        self.table = table;
        let ids: Vec<PatientId> = self.states.keys().cloned().collect();
        for id in ids {
            let fresh = self.new_state(&id);
            if let Some(st) = self.states.get_mut(&id) {
                st.info.patient = fresh.info.patient;
                st.info.bands = fresh.info.bands;
            }
        }
    }

    fn new_state(&self, id: &PatientId) -> PatientState {
        let patient = self.directory.get(id).cloned();
        let bands = Vital::ALL
            .iter()
            .map(|&v| match &patient {
                Some(p) => self.table.bands_for(v, id, p.age),
                None => Vec::new(),
            })
            .collect();
        PatientState {
            info: PatientInfo {
                patient,
                bands,
                latest: [f64::NAN; VITAL_COUNT],
                latest_at: [Timestamp(i64::MIN); VITAL_COUNT],
            },
            conditions: Vec::new(),
        }
    }

    /// Evaluates one observation set at time `now` and appends what it caused to `out`.
    pub fn process(&mut self, obs: &Observation, now: Timestamp, out: &mut Findings) {
        // One hash lookup for a known patient; the id is cloned only for a new one.
        let state = match self.states.get_mut(obs.patient_id.as_str()) {
            Some(s) => s,
            None => {
                let fresh = self.new_state(&obs.patient_id);
                self.states.entry(obs.patient_id.clone()).or_insert(fresh)
            }
        };
        for (vital, value) in obs.vitals.iter() {
            // Out-of-order readings must not overwrite a newer value.
            if obs.observed_at >= state.info.latest_at[vital.index()] {
                state.info.latest[vital.index()] = value;
                state.info.latest_at[vital.index()] = obs.observed_at;
            }
        }
        if state.info.patient.is_none() {
            out.unclassified.push(Unclassified {
                patient_id: obs.patient_id.clone(),
                device_id: obs.device_id.clone(),
                vital: None,
                value: None,
                observed_at: obs.observed_at,
                reason: UnclassifiedReason::UnknownPatient,
            });
        }

        match self.rules.profile {
            Profile::Classic => {
                classic(state, &self.table_vitals, self.table.version, obs, now, out)
            }
            Profile::Standard => {
                standard(
                    state,
                    &self.rules,
                    &self.margins,
                    &self.table_vitals,
                    self.table.version,
                    obs,
                    now,
                    out,
                );
                if self.rules.stale_device.enabled {
                    self.device_seen(obs, now, out);
                }
            }
        }
    }

    fn device_seen(&mut self, obs: &Observation, now: Timestamp, out: &mut Findings) {
        let dev = match self.devices.get_mut(obs.device_id.as_str()) {
            Some(d) => d,
            None => self
                .devices
                .entry(obs.device_id.clone())
                .or_insert_with(|| DeviceState {
                    patient_id: obs.patient_id.clone(),
                    last_seen: obs.observed_at,
                    active: None,
                }),
        };
        dev.last_seen = dev.last_seen.max(obs.observed_at);
        dev.patient_id.clone_from(&obs.patient_id);
        if let Some(active) = dev.active.take() {
            let refs = DeviceRefs {
                directory: &self.directory,
                states: &self.states,
                rules: &self.rules,
                version: self.table.version,
            };
            out.events.push(refs.event(
                &obs.device_id,
                &dev.patient_id,
                &active,
                obs.observed_at,
                now,
                AlertEventKind::Resolved,
            ));
        }
    }

    /// Time-driven rules at time `now`: stale devices and re-notification of alerts that
    /// are still abnormal and unacknowledged. Call it about once a second (stream time in
    /// a replay, wall time in a live run).
    pub fn tick(&mut self, now: Timestamp, out: &mut Findings) {
        if self.rules.profile == Profile::Classic {
            return;
        }
        let renotify = self.rules.renotify_after;
        if self.rules.stale_device.enabled {
            let after = self.rules.stale_device.after;
            let refs = DeviceRefs {
                directory: &self.directory,
                states: &self.states,
                rules: &self.rules,
                version: self.table.version,
            };
            for (device_id, dev) in self.devices.iter_mut() {
                match &mut dev.active {
                    None if now.since(dev.last_seen) > after => {
                        let rule_key = stale_key(device_id);
                        let active = Active {
                            alert_id: alert_id(&dev.patient_id, &rule_key, dev.last_seen),
                            episode_start: dev.last_seen,
                            priority: self.rules.stale_device.priority,
                            state: AlertState::Triggered,
                            last_notified: now,
                        };
                        out.events.push(refs.event(
                            device_id,
                            &dev.patient_id,
                            &active,
                            dev.last_seen,
                            now,
                            AlertEventKind::Triggered,
                        ));
                        dev.active = Some(active);
                    }
                    Some(a)
                        if a.state == AlertState::Triggered
                            && now.since(a.last_notified) >= renotify =>
                    {
                        a.last_notified = now;
                        out.events.push(refs.event(
                            device_id,
                            &dev.patient_id,
                            a,
                            dev.last_seen,
                            now,
                            AlertEventKind::Renotified,
                        ));
                    }
                    _ => {}
                }
            }
        }
        for (pid, st) in self.states.iter_mut() {
            for c in st.conditions.iter_mut() {
                let Some(a) = c.active.as_mut() else { continue };
                if a.state != AlertState::Triggered || now.since(a.last_notified) < renotify {
                    continue;
                }
                a.last_notified = now;
                out.events.push(condition_event(
                    pid,
                    &st.info,
                    &c.key,
                    a,
                    &self.rules,
                    self.table.version,
                    now,
                    AlertEventKind::Renotified,
                ));
            }
        }
    }

    /// Acknowledges an active alert: re-notification stops; it resolves when its condition
    /// clears.
    pub fn acknowledge(
        &mut self,
        id: &str,
        by: &str,
        now: Timestamp,
    ) -> Result<AlertEvent, AckError> {
        let rules = &self.rules;
        for (pid, st) in self.states.iter_mut() {
            for c in st.conditions.iter_mut() {
                let Some(a) = c.active.as_mut() else { continue };
                if a.alert_id != id {
                    continue;
                }
                if a.state == AlertState::Acknowledged {
                    return Err(AckError::AlreadyAcknowledged(id.to_owned()));
                }
                a.state = AlertState::Acknowledged;
                let mut e = condition_event(
                    pid,
                    &st.info,
                    &c.key,
                    a,
                    rules,
                    self.table.version,
                    now,
                    AlertEventKind::Acknowledged,
                );
                e.acknowledged_by = Some(by.to_owned());
                return Ok(e);
            }
        }
        for (device_id, dev) in self.devices.iter_mut() {
            let Some(a) = dev.active.as_mut() else {
                continue;
            };
            if a.alert_id != id {
                continue;
            }
            if a.state == AlertState::Acknowledged {
                return Err(AckError::AlreadyAcknowledged(id.to_owned()));
            }
            a.state = AlertState::Acknowledged;
            let refs = DeviceRefs {
                directory: &self.directory,
                states: &self.states,
                rules,
                version: self.table.version,
            };
            let mut e = refs.event(
                device_id,
                &dev.patient_id,
                a,
                now,
                now,
                AlertEventKind::Acknowledged,
            );
            e.acknowledged_by = Some(by.to_owned());
            return Ok(e);
        }
        Err(AckError::NotActive(id.to_owned()))
    }

    /// Ids of the alerts active now (triggered or acknowledged), with their state.
    pub fn active_alerts(&self) -> Vec<(String, AlertState, Priority)> {
        let mut v: Vec<_> = self
            .states
            .values()
            .flat_map(|s| s.conditions.iter())
            .filter_map(|c| c.active.as_ref())
            .chain(self.devices.values().filter_map(|d| d.active.as_ref()))
            .map(|a| (a.alert_id.clone(), a.state, a.priority))
            .collect();
        v.sort();
        v
    }
}

fn classic(
    state: &mut PatientState,
    table_vitals: &[bool; VITAL_COUNT],
    version: u32,
    obs: &Observation,
    now: Timestamp,
    out: &mut Findings,
) {
    if state.info.patient.is_none() {
        return;
    }
    for (vital, value) in obs.vitals.iter() {
        let bands = &state.info.bands[vital.index()];
        if !table_vitals[vital.index()] {
            continue;
        }
        match match_band(bands, value) {
            None => out.unclassified.push(no_band(obs, vital, value)),
            Some(b) if b.alert_flag => {
                let rule_key = band_key(vital, b.ref_id);
                // Classic semantics: every abnormal reading is its own alert, so the
                // episode is the reading itself.
                let active = Active {
                    alert_id: alert_id(&obs.patient_id, &rule_key, obs.observed_at),
                    episode_start: obs.observed_at,
                    priority: b.priority,
                    state: AlertState::Triggered,
                    last_notified: now,
                };
                let ctx = EventContext::of_observation(obs, &state.info, now, version);
                let detail = band_detail(b, vital, value, rule_key);
                out.events.push(event(
                    &ctx,
                    &detail,
                    &active,
                    AlertEventKind::Triggered,
                    AlertState::Triggered,
                ));
            }
            Some(_) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn standard(
    state: &mut PatientState,
    rules: &RulesConfig,
    margins: &[f64; VITAL_COUNT],
    table_vitals: &[bool; VITAL_COUNT],
    version: u32,
    obs: &Observation,
    now: Timestamp,
    out: &mut Findings,
) {
    let t = obs.observed_at;
    for (vital, value) in obs.vitals.iter() {
        // Threshold bands.
        if rules.thresholds.enabled && table_vitals[vital.index()] && state.info.patient.is_some() {
            let margin = margins[vital.index()];
            let matched = match_band(&state.info.bands[vital.index()], value)
                .map(|b| (b.ref_id, b.alert_flag));
            match matched {
                None => out.unclassified.push(no_band(obs, vital, value)),
                Some((ref_id, flagged)) => {
                    let bands = &state.info.bands[vital.index()];
                    let flagged_at = |x: f64| match_band(bands, x).is_some_and(|b| b.alert_flag);
                    let cleared = !flagged_at(value - margin) && !flagged_at(value + margin);
                    if flagged {
                        let key = RuleKey::Band { vital, ref_id };
                        step(
                            state,
                            key,
                            true,
                            false,
                            t,
                            rules.thresholds.persistence,
                            rules,
                            version,
                            obs,
                            now,
                            out,
                        );
                    }
                    // Other band conditions of this vital see a value outside their band.
                    let others: Vec<RuleKey> = state
                        .conditions
                        .iter()
                        .filter(|c| matches!(c.key, RuleKey::Band { vital: v, ref_id: r } if v == vital && r != ref_id))
                        .map(|c| c.key.clone())
                        .collect();
                    for key in others {
                        step(
                            state,
                            key,
                            false,
                            cleared,
                            t,
                            rules.thresholds.persistence,
                            rules,
                            version,
                            obs,
                            now,
                            out,
                        );
                    }
                }
            }
        }
        // Fixed limit rules.
        for (i, l) in rules.limits.iter().enumerate() {
            if l.vital != vital {
                continue;
            }
            let breached = l.breached(value);
            if breached || state.conditions.iter().any(|c| c.key == RuleKey::Limit(i)) {
                step(
                    state,
                    RuleKey::Limit(i),
                    breached,
                    l.cleared(value),
                    t,
                    l.persistence,
                    rules,
                    version,
                    obs,
                    now,
                    out,
                );
            }
        }
    }
    if rules.news2.enabled
        && let Some(score) = news2_now(&state.info, rules, t)
    {
        let prio = score.response.alarm_priority();
        let abnormal = prio.is_some();
        if abnormal || state.conditions.iter().any(|c| c.key == RuleKey::News2) {
            step(
                state,
                RuleKey::News2,
                abnormal,
                !abnormal,
                t,
                Duration::ZERO,
                rules,
                version,
                obs,
                now,
                out,
            );
            // Escalation: the same episode got worse.
            if let (Some(p), Some(c)) = (
                prio,
                state
                    .conditions
                    .iter_mut()
                    .find(|c| c.key == RuleKey::News2),
            ) && let Some(a) = c.active.as_mut()
                && p > a.priority
            {
                a.priority = p;
                a.last_notified = now;
                let a = a.clone();
                let ctx = EventContext::of_observation(obs, &state.info, now, version);
                let detail = describe(&RuleKey::News2, &state.info, rules, Some(p));
                out.events
                    .push(event(&ctx, &detail, &a, AlertEventKind::Escalated, a.state));
            }
        }
    }
    state.conditions.retain(|c| !c.is_idle());
}

/// Runs one condition's state machine and emits the event its transition causes.
#[allow(clippy::too_many_arguments)]
fn step(
    state: &mut PatientState,
    key: RuleKey,
    abnormal: bool,
    cleared: bool,
    t: Timestamp,
    persistence: Duration,
    rules: &RulesConfig,
    version: u32,
    obs: &Observation,
    now: Timestamp,
    out: &mut Findings,
) {
    let idx = match state.conditions.iter().position(|c| c.key == key) {
        Some(i) => i,
        None => {
            state.conditions.push(Condition {
                key: key.clone(),
                pending_since: None,
                active: None,
            });
            state.conditions.len() - 1
        }
    };
    let transition = state.conditions[idx].observe(abnormal, cleared, t, persistence);
    if transition == Transition::Nothing {
        return;
    }
    let detail = describe(&key, &state.info, rules, None);
    let ctx = EventContext::of_observation(obs, &state.info, now, version);
    let cond = &mut state.conditions[idx];
    match transition {
        Transition::Triggered => {
            let episode_start = cond.pending_since.unwrap_or(t);
            let active = Active {
                alert_id: alert_id(&obs.patient_id, &detail.rule_key, episode_start),
                episode_start,
                priority: detail.priority,
                state: AlertState::Triggered,
                last_notified: now,
            };
            out.events.push(event(
                &ctx,
                &detail,
                &active,
                AlertEventKind::Triggered,
                AlertState::Triggered,
            ));
            cond.pending_since = None;
            cond.active = Some(active);
        }
        Transition::Resolved => {
            if let Some(active) = cond.active.take() {
                let detail = EventDetail {
                    priority: active.priority,
                    ..detail
                };
                out.events.push(event(
                    &ctx,
                    &detail,
                    &active,
                    AlertEventKind::Resolved,
                    AlertState::Resolved,
                ));
            }
        }
        Transition::Nothing => {}
    }
}

/// NEWS2 from the patient's latest vitals, if the set is complete and fresh.
/// Supplemental oxygen that was never reported counts as room air.
fn news2_now(state: &PatientInfo, rules: &RulesConfig, t: Timestamp) -> Option<news2::News2Score> {
    let max_age = rules.news2.max_observation_age;
    let get = |v: Vital| {
        let i = v.index();
        let x = state.latest[i];
        (!x.is_nan() && t.since(state.latest_at[i]) <= max_age).then_some(x)
    };
    let input = News2Input {
        resp_rate: get(Vital::RespRate)?,
        spo2: get(Vital::Spo2)?,
        on_oxygen: get(Vital::OnOxygen).is_some_and(|x| x >= 0.5),
        systolic: get(Vital::Systolic)?,
        pulse: get(Vital::HeartRate)?,
        consciousness: Consciousness::from_code(get(Vital::Consciousness)?)?,
        temp_c: get(Vital::TempC)?,
        scale: state
            .patient
            .as_ref()
            .map(|p| p.spo2_scale)
            .unwrap_or_default(),
    };
    Some(news2::score(&input))
}

/// An event of an active patient condition that no reading caused (re-notification,
/// acknowledgement): stamped with `now`.
#[allow(clippy::too_many_arguments)]
fn condition_event(
    patient_id: &PatientId,
    info: &PatientInfo,
    key: &RuleKey,
    active: &Active,
    rules: &RulesConfig,
    version: u32,
    now: Timestamp,
    kind: AlertEventKind,
) -> AlertEvent {
    let ctx = EventContext {
        patient_id,
        patient: info.patient.as_deref(),
        latest: &info.latest,
        observed_at: now,
        now,
        device: None,
        version,
    };
    let detail = describe(key, info, rules, Some(active.priority));
    event(&ctx, &detail, active, kind, active.state)
}

fn band_key(vital: Vital, ref_id: u32) -> String {
    format!("threshold:{}:{}", vital.name(), ref_id)
}

fn band_detail(b: &ThresholdBand, vital: Vital, value: f64, rule_key: String) -> EventDetail<'_> {
    EventDetail {
        rule: "threshold",
        rule_key,
        priority: b.priority,
        vital: Some(vital),
        value: Some(value),
        band: Some(b),
        news2_score: None,
        message: b.alert_message.clone(),
    }
}

fn stale_key(device: &DeviceId) -> String {
    format!("device_stale:{device}")
}

/// What a stale-device alarm event needs from the engine besides the device itself.
struct DeviceRefs<'a> {
    directory: &'a HashMap<PatientId, Arc<Patient>>,
    states: &'a HashMap<PatientId, PatientState>,
    rules: &'a RulesConfig,
    version: u32,
}

impl DeviceRefs<'_> {
    /// One lifecycle event of a device's stale alarm.
    fn event(
        &self,
        device: &DeviceId,
        patient_id: &PatientId,
        active: &Active,
        observed_at: Timestamp,
        now: Timestamp,
        kind: AlertEventKind,
    ) -> AlertEvent {
        let latest = self
            .states
            .get(patient_id.as_str())
            .map(|s| s.info.latest)
            .unwrap_or([f64::NAN; VITAL_COUNT]);
        let ctx = EventContext {
            patient_id,
            patient: self.directory.get(patient_id).map(|p| p.as_ref()),
            latest: &latest,
            observed_at,
            now,
            device: Some(device),
            version: self.version,
        };
        let state = match kind {
            AlertEventKind::Resolved => AlertState::Resolved,
            AlertEventKind::Acknowledged => AlertState::Acknowledged,
            _ => active.state,
        };
        event(
            &ctx,
            &stale_detail(device, active.priority, self.rules),
            active,
            kind,
            state,
        )
    }
}

fn stale_detail(
    device: &DeviceId,
    priority: Priority,
    rules: &RulesConfig,
) -> EventDetail<'static> {
    EventDetail {
        rule: "device_stale",
        rule_key: stale_key(device),
        priority,
        vital: None,
        value: None,
        band: None,
        news2_score: None,
        message: format!(
            "No data from device {device} for over {}",
            rules.stale_device.after
        ),
    }
}

/// The rule, message and reference row behind a condition.
fn describe<'a>(
    key: &RuleKey,
    state: &'a PatientInfo,
    rules: &RulesConfig,
    priority: Option<Priority>,
) -> EventDetail<'a> {
    match key {
        RuleKey::Band { vital, ref_id } => {
            let value = state.latest[vital.index()];
            let band = state.bands[vital.index()]
                .iter()
                .find(|b| b.ref_id == *ref_id);
            EventDetail {
                rule: "threshold",
                rule_key: band_key(*vital, *ref_id),
                priority: priority
                    .or(band.map(|b| b.priority))
                    .unwrap_or(Priority::Medium),
                vital: Some(*vital),
                value: Some(value),
                band,
                news2_score: None,
                message: band.map(|b| b.alert_message.clone()).unwrap_or_default(),
            }
        }
        RuleKey::Limit(i) => {
            let l = &rules.limits[*i];
            EventDetail {
                rule: "limit",
                rule_key: format!("limit:{}", l.name),
                priority: priority.unwrap_or(l.priority),
                vital: Some(l.vital),
                value: Some(state.latest[l.vital.index()]),
                band: None,
                news2_score: None,
                message: l.message.clone(),
            }
        }
        RuleKey::News2 => {
            let score = news2_now(
                state,
                rules,
                Timestamp(
                    state
                        .latest_at
                        .iter()
                        .copied()
                        .max()
                        .unwrap_or(Timestamp(0))
                        .0,
                ),
            );
            let prio = score.and_then(|s| s.response.alarm_priority());
            EventDetail {
                rule: "news2",
                rule_key: "news2".into(),
                priority: priority.or(prio).unwrap_or(Priority::Low),
                vital: None,
                value: score.map(|s| f64::from(s.total)),
                band: None,
                news2_score: score.map(|s| s.total),
                message: score
                    .map(|s| format!("{} (score {})", s.response.describe(), s.total))
                    .unwrap_or_else(|| "NEWS2".into()),
            }
        }
    }
}

fn no_band(obs: &Observation, vital: Vital, value: f64) -> Unclassified {
    Unclassified {
        patient_id: obs.patient_id.clone(),
        device_id: obs.device_id.clone(),
        vital: Some(vital),
        value: Some(value),
        observed_at: obs.observed_at,
        reason: UnclassifiedReason::NoBand,
    }
}

fn event(
    ctx: &EventContext<'_>,
    d: &EventDetail<'_>,
    a: &Active,
    kind: AlertEventKind,
    state: AlertState,
) -> AlertEvent {
    let latest = |v: Vital| {
        let x = ctx.latest[v.index()];
        (!x.is_nan()).then_some(x)
    };
    AlertEvent {
        alert_id: a.alert_id.clone(),
        event: kind,
        state,
        rule: d.rule.to_owned(),
        rule_key: d.rule_key.clone(),
        priority: if kind == AlertEventKind::Triggered {
            d.priority
        } else {
            a.priority
        },
        patient_id: ctx.patient_id.clone(),
        patient: ctx
            .patient
            .map(|p| AlertPatient {
                patientname: p.name.clone(),
                age: Some(p.age),
                patientaddress: p.address.clone(),
                phone_number: p.phone.clone(),
                admitted_ward: p.ward.clone(),
            })
            .unwrap_or_default(),
        vital: d.vital,
        value: d.value.filter(|v| !v.is_nan()),
        bp: latest(Vital::Systolic),
        heart_beat: latest(Vital::HeartRate),
        news2_score: d.news2_score,
        ref_id: d.band.map(|b| b.ref_id),
        ref_version: d.band.map(|_| ctx.version),
        alert_message: d.message.clone(),
        input_message_time: ctx.observed_at,
        alert_generated_time: ctx.now,
        episode_start: a.episode_start,
        device_id: ctx.device.map(|x| x.0.clone()),
        acknowledged_by: None,
    }
}
