//! The alert engine: per-patient state plus rules, observations in, alert events out.
//!
//! Sits between the codecs and every sink. [`Engine::process`] takes one observation set and
//! the pipeline's clock `now` (a parameter: this crate never reads a clock), updates the
//! patient's latest vitals, applies the rules of the configured [`Profile`], and appends
//! alert lifecycle events and unclassified readings to a caller-owned [`Findings`] buffer,
//! so the hot path allocates nothing for a normal reading. [`Engine::tick`] drives
//! time-based behaviour (stale devices, re-notification, eviction of idle state) and
//! [`Engine::acknowledge`] the lifecycle.
//!
//! # Time
//! Rules run on event time (`observed_at`); everything that measures how long something
//! lasted on our side (re-notification, a device's silence, eviction) uses `now`, the one
//! clock the pipeline injects (wall clock live, stream clock in a replay). A device's
//! silence is measured from the arrival (on that clock) of its newest reading, so a
//! monitor whose clock runs 90 s behind is not "silent", and one whose clock runs ahead is
//! not "talking" after it stops.
//!
//! # Order
//! Every condition goes through one state machine ([`Condition::observe`]): pending while
//! its persistence time runs, active once it fires (one active alert per patient and rule
//! key: deduplication), cleared only when the value is back inside by the hysteresis
//! margin (and, for NEWS2, has stayed there for a while). Readings may arrive out of
//! order. A condition remembers the newest event time at which it held and at which it
//! did not: a reading older than the newest evidence against it is history, never a
//! decision, so a late normal reading cannot resolve an alert that newer abnormal readings
//! keep alive, and a late abnormal one cannot restart an episode that newer normal readings
//! ended. A reading more than the lateness window older than its device's newest reading is
//! not evaluated at all ([`Processed::Late`]); the pipeline still archives it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::alert::{
    AlertEvent, AlertEventKind, AlertId, AlertPatient, AlertState, Priority, RuleKey, alert_id,
    reading_alert_id,
};
use crate::clock::TimeConfig;
use crate::model::{
    Consciousness, DeviceId, Duration, Observation, Patient, PatientId, Spo2Scale, Timestamp,
    Unclassified, UnclassifiedReason, VITAL_COUNT, Vital,
};
use crate::reference::{ThresholdBand, ThresholdTable, match_band, match_band_exact};
use crate::rules::news2::{self, News2Input, News2Score};
use crate::rules::{Profile, RulesConfig, UnknownOxygen};

/// What one call to the engine produced. Reuse it across calls (call [`Findings::clear`]).
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Alert lifecycle events, in the order they happened.
    pub events: Vec<AlertEvent>,
    /// Readings that could not be classified against the reference data.
    pub unclassified: Vec<Unclassified>,
    /// NEWS2 results: one per in-order observation that completed a fresh set (only
    /// when NEWS2 is enabled; a repeat of the same result at the same instant, e.g. a
    /// re-delivered reading, adds none), for the warehouse's `scores` table.
    pub scores: Vec<ScoreRecord>,
}

impl Findings {
    /// Empties the lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.events.clear();
        self.unclassified.clear();
        self.scores.clear();
    }
}

/// A patient's NEWS2 at one observation: the aggregate, the points of each parameter and
/// how it was scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRecord {
    /// Whose score.
    pub patient_id: PatientId,
    /// The observation that completed the set (its `observed_at`).
    pub observed_at: Timestamp,
    /// Aggregate, parameter points and clinical response.
    pub score: News2Score,
    /// The SpO2 scale used.
    pub scale: Spo2Scale,
    /// Oxygen status was unknown and scored as room air.
    pub assumed_air: bool,
}

/// What the engine did with one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Evaluated against the rules.
    Evaluated,
    /// Older than its device's newest reading by more than the lateness window: not
    /// evaluated (archive and count it).
    Late,
    /// Not taken, with the reason (a state bound was reached): make it a dead letter.
    Rejected(String),
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

/// A condition's rule inside the engine: like [`RuleKey`], with limits by their index in
/// the configured list.
#[derive(Debug, Clone, PartialEq)]
enum CondKey {
    Band { vital: Vital, ref_id: u32 },
    Limit(usize),
    News2,
}

#[derive(Debug, Clone)]
struct Active {
    alert_id: AlertId,
    episode_start: Timestamp,
    priority: Priority,
    state: AlertState,
    last_notified: Timestamp,
    /// An `inputs_stale` event was sent and no complete set has come since.
    inputs_stale: bool,
}

impl Active {
    fn new(
        alert_id: AlertId,
        episode_start: Timestamp,
        priority: Priority,
        now: Timestamp,
    ) -> Self {
        Active {
            alert_id,
            episode_start,
            priority,
            state: AlertState::Triggered,
            last_notified: now,
            inputs_stale: false,
        }
    }
}

/// How long a condition must hold before it fires, and be clear before it resolves.
#[derive(Debug, Clone, Copy)]
struct Timing {
    persistence: Duration,
    clear_after: Duration,
    /// A break in a pending run (readings where the condition does not hold) no longer
    /// than this does not restart persistence. Zero: any break restarts it.
    tolerance: Duration,
}

impl Timing {
    fn at_once(persistence: Duration) -> Self {
        Timing {
            persistence,
            clear_after: Duration::ZERO,
            tolerance: Duration::ZERO,
        }
    }
}

const NEVER: Timestamp = Timestamp(i64::MIN);

#[derive(Debug, Clone)]
struct Condition {
    key: CondKey,
    /// Start of the current abnormal run, while persistence runs.
    pending_since: Option<Timestamp>,
    /// Newest event time at which the condition held.
    last_abnormal: Timestamp,
    /// Newest event time at which it did not.
    last_normal: Timestamp,
    /// Start of the current run of cleared readings, while an alert is active.
    clear_since: Option<Timestamp>,
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
    fn new(key: CondKey) -> Self {
        Condition {
            key,
            pending_since: None,
            last_abnormal: NEVER,
            last_normal: NEVER,
            clear_since: None,
            active: None,
        }
    }

    /// The one state machine every rule shares: persistence, dedup, hysteresis, order.
    ///
    /// `abnormal`: the rule's condition holds at event time `t`. `cleared`: the value is
    /// back inside by the hysteresis margin (only consulted when not abnormal).
    fn observe(
        &mut self,
        abnormal: bool,
        cleared: bool,
        t: Timestamp,
        timing: Timing,
    ) -> Transition {
        if abnormal {
            // Newer readings showed it did not hold: this one is history.
            if t < self.last_normal {
                return Transition::Nothing;
            }
            self.last_abnormal = self.last_abnormal.max(t);
            if self.active.is_some() {
                self.clear_since = None;
                return Transition::Nothing;
            }
            let since = self.pending_since.map_or(t, |s| s.min(t));
            self.pending_since = Some(since);
            if self.last_abnormal.since(since) >= timing.persistence {
                return Transition::Triggered;
            }
            return Transition::Nothing;
        }
        if t < self.last_abnormal {
            // Late: newer readings showed the condition holding, so this one can clear
            // nothing. Without a tolerance it still proves a break in a pending run that
            // began before it: persistence restarts from the newest abnormal reading. With
            // one it proves nothing (a lone late reading cannot tell how long the break
            // was), so it leaves the run alone.
            self.last_normal = self.last_normal.max(t);
            if timing.tolerance == Duration::ZERO && self.pending_since.is_some_and(|s| s < t) {
                self.pending_since = Some(self.last_abnormal);
            }
            return Transition::Nothing;
        }
        self.last_normal = self.last_normal.max(t);
        // Persistence needs the condition to hold without a break longer than the
        // tolerance (without one, without any break).
        if timing.tolerance == Duration::ZERO || t.since(self.last_abnormal) > timing.tolerance {
            self.pending_since = None;
        }
        if self.active.is_none() {
            return Transition::Nothing;
        }
        if !cleared {
            self.clear_since = None;
            return Transition::Nothing;
        }
        let since = self.clear_since.map_or(t, |s| s.min(t));
        self.clear_since = Some(since);
        if t.since(since) >= timing.clear_after {
            self.clear_since = None;
            return Transition::Resolved;
        }
        Transition::Nothing
    }

    /// Nothing pending or active, and no evidence recent enough to judge a late reading.
    fn is_forgettable(&self, t: Timestamp, lateness: Duration) -> bool {
        self.pending_since.is_none()
            && self.active.is_none()
            && t.since(self.last_abnormal.max(self.last_normal)) > lateness
    }
}

/// The bands that apply to one patient, per vital index; shared by every patient of the
/// same age (a hundred thousand patients need a handful of these, not one each).
type Bands = Arc<Vec<Vec<ThresholdBand>>>;

/// The key under which compiled bands are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BandsKey {
    Age(u32),
    Override(PatientId),
}

/// A NEWS2 score and how it was obtained.
#[derive(Debug, Clone, Copy)]
struct Scored {
    score: News2Score,
    /// Oxygen status unknown, scored as room air (`news2.unknown_oxygen = "air"`).
    assumed_air: bool,
    /// The event time it was scored at.
    at: Timestamp,
}

#[derive(Debug)]
struct PatientState {
    info: PatientInfo,
    conditions: Vec<Condition>,
    /// Arrival of the newest reading, on the pipeline's clock (for eviction).
    last_arrival: Timestamp,
}

/// What is known about a patient, apart from their alert conditions (kept apart so a
/// condition can change while the rest is read).
#[derive(Debug)]
struct PatientInfo {
    patient: Option<Arc<Listed>>,
    bands: Bands,
    latest: [f64; VITAL_COUNT],
    latest_at: [Timestamp; VITAL_COUNT],
    /// The newest NEWS2 score.
    news2: Option<Scored>,
}

/// A catalog patient as the engine keeps them: the record, and the details each of
/// their alert events carries, made once and shared by every event.
#[derive(Debug)]
struct Listed {
    patient: Patient,
    details: Arc<AlertPatient>,
}

impl Listed {
    fn new(p: Patient) -> Self {
        let details = Arc::new(AlertPatient {
            patientname: p.name.clone(),
            age: Some(p.age),
            patientaddress: p.address.clone(),
            phone_number: p.phone.clone(),
            admitted_ward: p.ward.clone(),
        });
        Listed {
            patient: p,
            details,
        }
    }
}

impl std::ops::Deref for Listed {
    type Target = Patient;

    fn deref(&self) -> &Patient {
        &self.patient
    }
}

/// A threshold band's rule key and message, shared by every event the band raises
/// (a classic alert flood raises one per abnormal reading).
type BandTexts = Map<(Vital, u32), (Arc<str>, Arc<str>)>;

impl PatientInfo {
    fn scale(&self) -> Spo2Scale {
        self.patient
            .as_ref()
            .map(|p| p.spo2_scale)
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct DeviceState {
    patient_id: PatientId,
    /// Newest observation time from this device (its own clock): judges lateness.
    newest_at: Timestamp,
    /// Arrival of its newest reading on the pipeline's clock: judges silence.
    last_seen: Timestamp,
    active: Option<Active>,
}

/// The engine's maps, looked up several times per reading: foldhash instead of std's
/// SipHash (4 % of a replay's CPU went to hashing patient ids). Still seeded per process,
/// so a feed cannot choose ids that collide.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The (empty) details of a patient the catalog does not list, one value for every such
/// event: the alert writer escapes a patient's details once per shared value, and a feed
/// of unknown ids would otherwise make it cache one copy per event.
static UNLISTED: std::sync::LazyLock<Arc<AlertPatient>> = std::sync::LazyLock::new(Arc::default);

/// The alert engine. One instance owns the state of the patients routed to it.
#[derive(Debug)]
pub struct Engine {
    rules: RulesConfig,
    lateness: Duration,
    margins: [f64; VITAL_COUNT],
    table: ThresholdTable,
    /// Which vitals the table has any band for (else a vital is not band-checked).
    table_vitals: [bool; VITAL_COUNT],
    directory: Map<PatientId, Arc<Listed>>,
    band_cache: Map<BandsKey, Bands>,
    band_texts: BandTexts,
    states: Map<PatientId, PatientState>,
    devices: Map<DeviceId, DeviceState>,
    /// Open alerts of evicted patients, back with their next reading.
    parked: Map<PatientId, Vec<Condition>>,
    /// Evicted devices with an open stale-device alarm.
    parked_devices: Map<DeviceId, DeviceState>,
    last_eviction: Timestamp,
}

/// Everything an event needs besides the transition itself.
struct EventContext<'a> {
    patient_id: &'a PatientId,
    patient: Option<&'a Listed>,
    /// Classic `heartBeat` and `bp`: the reading's own, or the latest for events that no
    /// reading caused.
    heart_beat: Option<f64>,
    bp: Option<f64>,
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
        patient: Option<&'a Listed>,
        now: Timestamp,
        version: u32,
    ) -> Self {
        EventContext {
            patient_id: &obs.patient_id,
            patient,
            heart_beat: obs.vitals.get(Vital::HeartRate),
            bp: obs.vitals.get(Vital::Systolic),
            observed_at: obs.observed_at,
            now,
            device: Some(&obs.device_id),
            version,
        }
    }

    /// The context of an event no reading caused (re-notification, acknowledgement).
    fn of_state(
        patient_id: &'a PatientId,
        info: Option<&'a PatientInfo>,
        patient: Option<&'a Listed>,
        now: Timestamp,
        version: u32,
    ) -> Self {
        let latest = |v: Vital| info.map(|i| i.latest[v.index()]).filter(|x| !x.is_nan());
        EventContext {
            patient_id,
            patient,
            heart_beat: latest(Vital::HeartRate),
            bp: latest(Vital::Systolic),
            observed_at: now,
            now,
            device: None,
            version,
        }
    }
}

struct EventDetail<'a> {
    rule: &'static str,
    rule_key: Arc<str>,
    priority: Priority,
    vital: Option<Vital>,
    value: Option<f64>,
    band: Option<&'a ThresholdBand>,
    news2_score: Option<u32>,
    message: Arc<str>,
}

/// What every rule step needs to know about the observation being evaluated.
struct StepCtx<'a> {
    rules: &'a RulesConfig,
    version: u32,
    obs: &'a Observation,
    /// The event time rules use: `observed_at`, but never later than `now`.
    t: Timestamp,
    now: Timestamp,
}

impl Engine {
    /// A new engine with these rules and reference data, and the default lateness window
    /// (see [`Engine::with_lateness`]).
    pub fn new(rules: RulesConfig, patients: Vec<Patient>, table: ThresholdTable) -> Self {
        let mut e = Engine {
            margins: rules.thresholds.margins(),
            rules,
            lateness: TimeConfig::default().lateness,
            table: ThresholdTable::default(),
            table_vitals: [false; VITAL_COUNT],
            directory: Map::default(),
            band_cache: Map::default(),
            band_texts: Map::default(),
            states: Map::default(),
            devices: Map::default(),
            parked: Map::default(),
            parked_devices: Map::default(),
            last_eviction: NEVER,
        };
        e.load_reference(patients, table);
        e
    }

    /// Sets the out-of-order tolerance (`time.lateness`).
    pub fn with_lateness(mut self, lateness: Duration) -> Self {
        self.lateness = lateness;
        self
    }

    /// Replaces the reference data (hot reload): patient state and active alerts are kept,
    /// each patient's bands are recompiled.
    pub fn load_reference(&mut self, patients: Vec<Patient>, table: ThresholdTable) {
        self.directory = patients
            .into_iter()
            .map(|p| (p.patient_id.clone(), Arc::new(Listed::new(p))))
            .collect();
        for v in Vital::ALL {
            self.table_vitals[v.index()] = table.has_vital(v);
        }
        self.table = table;
        self.band_cache.clear();
        self.band_texts.clear();
        let ids: Vec<PatientId> = self.states.keys().cloned().collect();
        for id in ids {
            let (patient, bands) = self.reference_of(&id);
            if let Some(st) = self.states.get_mut(&id) {
                st.info.patient = patient;
                st.info.bands = bands;
            }
        }
    }

    /// A patient's catalog entry and compiled bands.
    fn reference_of(&mut self, id: &PatientId) -> (Option<Arc<Listed>>, Bands) {
        let patient = self.directory.get(id).cloned();
        let key = match &patient {
            None => None,
            Some(_)
                if self
                    .table
                    .bands
                    .iter()
                    .any(|b| b.patient_id.as_ref() == Some(id)) =>
            {
                Some(BandsKey::Override(id.clone()))
            }
            Some(p) => Some(BandsKey::Age(p.age)),
        };
        let table = &self.table;
        let bands = match key {
            None => self
                .band_cache
                .entry(BandsKey::Age(u32::MAX))
                .or_insert_with(|| Arc::new(vec![Vec::new(); VITAL_COUNT]))
                .clone(),
            Some(key) => {
                let age = patient.as_ref().map_or(0, |p| p.age);
                self.band_cache
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(
                            Vital::ALL
                                .iter()
                                .map(|&v| table.bands_for(v, id, age))
                                .collect(),
                        )
                    })
                    .clone()
            }
        };
        (patient, bands)
    }

    fn new_state(&mut self, id: &PatientId, now: Timestamp) -> PatientState {
        let (patient, bands) = self.reference_of(id);
        PatientState {
            info: PatientInfo {
                patient,
                bands,
                latest: [f64::NAN; VITAL_COUNT],
                latest_at: [NEVER; VITAL_COUNT],
                news2: None,
            },
            conditions: self.parked.remove(id.as_str()).unwrap_or_default(),
            last_arrival: now,
        }
    }

    /// Evaluates one observation set; `now` is the pipeline's clock at its arrival.
    /// Appends what it caused to `out` and says what it did with the observation.
    pub fn process(&mut self, obs: &Observation, now: Timestamp, out: &mut Findings) -> Processed {
        // The patient map is looked up once per observation in the common case (a patient
        // already tracked); the limit needs a second look only when the map is full.
        if self.states.len() >= self.rules.state.max_patients
            && !self.states.contains_key(obs.patient_id.as_str())
        {
            return Processed::Rejected(format!(
                "the engine already tracks {} patients (rules.state.max_patients)",
                self.rules.state.max_patients
            ));
        }
        // Nothing is observed after now: a reading stamped ahead of the clock (within
        // `time.max_future`, or the engine would never see it) counts as observed now, so
        // one fast device clock cannot make every later reading look late.
        let t = obs.observed_at.min(now);
        if self.rules.profile == Profile::Standard {
            match self.device_seen(obs, t, now, out) {
                Processed::Evaluated => {}
                other => return other,
            }
        }
        let state = if let Some(state) = self.states.get_mut(obs.patient_id.as_str()) {
            state
        } else {
            let fresh = self.new_state(&obs.patient_id, now);
            self.states.entry(obs.patient_id.clone()).or_insert(fresh)
        };
        state.last_arrival = now;
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
        let ctx = StepCtx {
            rules: &self.rules,
            version: self.table.version,
            obs,
            t,
            now,
        };
        match self.rules.profile {
            Profile::Classic => classic(state, &self.table_vitals, &mut self.band_texts, &ctx, out),
            Profile::Standard => standard(
                state,
                &self.margins,
                &self.table_vitals,
                self.lateness,
                &ctx,
                out,
            ),
        }
        Processed::Evaluated
    }

    /// Device bookkeeping of the standard profile: the lateness check, the device's
    /// silence clock, and the end of its stale alarm.
    fn device_seen(
        &mut self,
        obs: &Observation,
        t: Timestamp,
        now: Timestamp,
        out: &mut Findings,
    ) -> Processed {
        let dev = match self.devices.get_mut(obs.device_id.as_str()) {
            Some(d) => d,
            None => {
                let d = match self.parked_devices.remove(obs.device_id.as_str()) {
                    Some(d) => d,
                    None if self.devices.len() >= self.rules.state.max_devices => {
                        return Processed::Rejected(format!(
                            "the engine already tracks {} devices (rules.state.max_devices)",
                            self.rules.state.max_devices
                        ));
                    }
                    None => DeviceState {
                        patient_id: obs.patient_id.clone(),
                        newest_at: t,
                        last_seen: now,
                        active: None,
                    },
                };
                self.devices.entry(obs.device_id.clone()).or_insert(d)
            }
        };
        if dev.newest_at.since(t) > self.lateness {
            return Processed::Late;
        }
        if t < dev.newest_at {
            // Late within the window: evaluated, but old data does not prove the device
            // is delivering now.
            return Processed::Evaluated;
        }
        dev.newest_at = t;
        dev.last_seen = now;
        if dev.patient_id != obs.patient_id {
            dev.patient_id.clone_from(&obs.patient_id);
        }
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
        Processed::Evaluated
    }

    /// Time-driven rules at time `now` (the pipeline's clock): stale devices,
    /// re-notification of alerts that are still abnormal and unacknowledged, and eviction
    /// of idle state. Call it about once a second of that clock.
    pub fn tick(&mut self, now: Timestamp, out: &mut Findings) {
        self.evict_idle(now);
        if self.rules.profile == Profile::Classic {
            return;
        }
        let first = out.events.len();
        self.tick_rules(now, out);
        // State lives in hash maps; events of one tick go out in alert-id order, so the
        // same input gives the same alert log, line for line.
        out.events[first..].sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
    }

    fn tick_rules(&mut self, now: Timestamp, out: &mut Findings) {
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
                        // Silence is measured on our clock; the episode is named after the
                        // device's newest reading, so a replay names it the same way.
                        let rule_key = stale_key(device_id);
                        let active = Active::new(
                            alert_id(&dev.patient_id, &rule_key, dev.newest_at),
                            dev.newest_at,
                            self.rules.stale_device.priority,
                            now,
                        );
                        out.events.push(refs.event(
                            device_id,
                            &dev.patient_id,
                            &active,
                            dev.newest_at,
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
                            dev.newest_at,
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
                // Re-notify only while still abnormal: an alert whose newest evidence is
                // normal is clearing (hysteresis, NEWS2's `clear_after`) and pages nobody.
                if c.last_normal > c.last_abnormal {
                    continue;
                }
                a.last_notified = now;
                out.events.push(condition_event(
                    pid,
                    Some(&st.info),
                    self.directory.get(pid).map(|p| p.as_ref()),
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

    /// Forgets patients and devices idle for longer than `rules.state.evict_after`,
    /// keeping their open alerts aside. Runs at most once a minute of the clock.
    fn evict_idle(&mut self, now: Timestamp) {
        if now.since(self.last_eviction) < Duration::from_secs(60) {
            return;
        }
        self.last_eviction = now;
        let after = self.rules.state.evict_after;
        for (id, st) in self
            .states
            .extract_if(|_, s| now.since(s.last_arrival) > after)
        {
            let open: Vec<Condition> = st
                .conditions
                .into_iter()
                .filter(|c| c.active.is_some())
                .collect();
            if !open.is_empty() {
                self.parked.insert(id, open);
            }
        }
        for (id, d) in self
            .devices
            .extract_if(|_, d| now.since(d.last_seen) > after)
        {
            if d.active.is_some() {
                self.parked_devices.insert(id, d);
            }
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    /// How many patients and devices the engine tracks now (parked alerts not counted).
    pub fn tracked(&self) -> (usize, usize) {
        (self.states.len(), self.devices.len())
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
        let version = self.table.version;
        let patients = self
            .states
            .iter_mut()
            .map(|(pid, st)| (pid, Some(&st.info), &mut st.conditions))
            .chain(
                self.parked
                    .iter_mut()
                    .map(|(pid, conds)| (pid, None, conds)),
            );
        for (pid, info, conditions) in patients {
            for c in conditions.iter_mut() {
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
                    info,
                    self.directory.get(pid).map(|p| p.as_ref()),
                    &c.key,
                    a,
                    rules,
                    version,
                    now,
                    AlertEventKind::Acknowledged,
                );
                e.acknowledged_by = Some(by.to_owned());
                return Ok(e);
            }
        }
        let refs = DeviceRefs {
            directory: &self.directory,
            states: &self.states,
            rules,
            version,
        };
        for (device_id, dev) in self
            .devices
            .iter_mut()
            .chain(self.parked_devices.iter_mut())
        {
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

    /// Takes back the open alerts an alert store kept, at start-up after a stop or a crash,
    /// from their latest events: an open alert can then be acknowledged, resolves when its
    /// condition clears, and the same condition raises no second alert. Patient alerts wait
    /// aside (as for an evicted patient) and carry on with the patient's next reading;
    /// stale-device alarms carry on at once. Only the standard profile keeps alerts open;
    /// the classic one restores nothing. Of several open alerts of one patient and rule
    /// (classic alerts in a data directory later run with the standard profile), the
    /// newest episode is kept. Returns how many alerts were restored.
    pub fn restore(&mut self, open: impl IntoIterator<Item = AlertEvent>) -> usize {
        if self.rules.profile == Profile::Classic {
            return 0;
        }
        let mut restored = 0;
        for e in open {
            if e.state == AlertState::Resolved {
                continue;
            }
            let active = Active {
                alert_id: e.alert_id.clone(),
                episode_start: e.episode_start,
                priority: e.priority,
                state: e.state,
                last_notified: e.alert_generated_time,
                inputs_stale: e.event == AlertEventKind::InputsStale,
            };
            let Ok(rule_key) = e.rule_key.parse::<RuleKey>() else {
                continue;
            };
            let key = match rule_key {
                RuleKey::DeviceStale(device) => {
                    let dev = self.devices.entry(device).or_insert_with(|| DeviceState {
                        patient_id: e.patient_id.clone(),
                        newest_at: e.episode_start,
                        last_seen: e.episode_start,
                        active: None,
                    });
                    if dev
                        .active
                        .as_ref()
                        .is_none_or(|a| a.episode_start < e.episode_start)
                    {
                        dev.active = Some(active);
                        restored += 1;
                    }
                    continue;
                }
                RuleKey::News2 => CondKey::News2,
                RuleKey::Band { vital, ref_id } => CondKey::Band { vital, ref_id },
                RuleKey::Limit(name) => match self.rules.limits.iter().position(|l| l.name == name)
                {
                    Some(i) => CondKey::Limit(i),
                    // A rule no longer configured: nothing can clear it in the engine.
                    None => continue,
                },
            };
            let conditions = self.parked.entry(e.patient_id.clone()).or_default();
            match conditions.iter_mut().find(|c| c.key == key) {
                Some(c)
                    if c.active
                        .as_ref()
                        .is_some_and(|a| a.episode_start >= e.episode_start) => {}
                Some(c) => c.active = Some(active),
                None => {
                    let mut c = Condition::new(key);
                    // The episode held at least until its latest event: older readings
                    // arriving after the restart cannot end it.
                    c.last_abnormal = e.input_message_time.min(e.alert_generated_time);
                    c.active = Some(active);
                    conditions.push(c);
                    restored += 1;
                }
            }
        }
        restored
    }

    /// Makes the engine's open alerts those of the alert store, after Kafka partitions
    /// (and the patients keyed to them) moved between replicas that share one store. Call
    /// it only when every event this engine emitted is recorded: the store is then the
    /// truth for every alert. A patient whose open alerts differ from the store's (another
    /// replica raised one, or resolved one this engine still holds) loses its in-memory
    /// state and takes the store's alerts back as at start-up ([`Engine::restore`]): the
    /// same condition raises no second alert, and an alert resolved elsewhere no longer
    /// hides a new one. Patients that agree keep their state; a device's stale alarm is
    /// treated alike. Returns how many patients and devices were re-synchronised.
    pub fn resync(&mut self, open: Vec<AlertEvent>) -> usize {
        if self.rules.profile == Profile::Classic {
            return 0;
        }
        let mut patients: HashMap<PatientId, BTreeSet<&str>> = HashMap::new();
        let mut devices: HashMap<DeviceId, &str> = HashMap::new();
        for e in open.iter().filter(|e| e.state != AlertState::Resolved) {
            match e.rule_key.parse::<RuleKey>() {
                Ok(RuleKey::DeviceStale(d)) => {
                    devices.insert(d, e.alert_id.as_str());
                }
                Ok(_) => {
                    patients
                        .entry(e.patient_id.clone())
                        .or_default()
                        .insert(e.alert_id.as_str());
                }
                Err(_) => {}
            }
        }
        let none = BTreeSet::new();
        fn held(conds: &[Condition]) -> BTreeSet<&str> {
            conds
                .iter()
                .filter_map(|c| c.active.as_ref())
                .map(|a| a.alert_id.as_str())
                .collect()
        }
        let differ: Vec<PatientId> = self
            .states
            .iter()
            .filter(|(id, st)| held(&st.conditions) != *patients.get(*id).unwrap_or(&none))
            .map(|(id, _)| id.clone())
            .collect();
        let mut changed = differ.len();
        for id in &differ {
            self.states.remove(id);
        }
        // Parked alerts are only alerts: taken back from the store below.
        changed += self
            .parked
            .iter()
            .filter(|(id, conds)| held(conds) != *patients.get(*id).unwrap_or(&none))
            .count();
        self.parked.clear();
        for (id, dev) in self
            .devices
            .iter_mut()
            .chain(self.parked_devices.iter_mut())
        {
            if dev.active.as_ref().map(|a| a.alert_id.as_str()) != devices.get(id).copied() {
                dev.active = None;
                changed += 1;
            }
        }
        self.parked_devices.retain(|_, d| d.active.is_some());
        let states = &self.states;
        let back: Vec<AlertEvent> = open
            .into_iter()
            .filter(|e| {
                matches!(e.rule_key.parse::<RuleKey>(), Ok(RuleKey::DeviceStale(_)))
                    || !states.contains_key(&e.patient_id)
            })
            .collect();
        self.restore(back);
        changed
    }

    /// Ids of the alerts active now (triggered or acknowledged), with their state,
    /// including those of evicted patients and devices.
    pub fn active_alerts(&self) -> Vec<(AlertId, AlertState, Priority)> {
        let mut v: Vec<_> = self
            .states
            .values()
            .flat_map(|s| s.conditions.iter())
            .chain(self.parked.values().flatten())
            .filter_map(|c| c.active.as_ref())
            .chain(
                self.devices
                    .values()
                    .chain(self.parked_devices.values())
                    .filter_map(|d| d.active.as_ref()),
            )
            .map(|a| (a.alert_id.clone(), a.state, a.priority))
            .collect();
        v.sort();
        v
    }
}

fn classic(
    state: &mut PatientState,
    table_vitals: &[bool; VITAL_COUNT],
    band_texts: &mut BandTexts,
    ctx: &StepCtx<'_>,
    out: &mut Findings,
) {
    let obs = ctx.obs;
    for (vital, value) in obs.vitals.iter() {
        if state.info.latest_at[vital.index()] <= ctx.t {
            state.info.latest[vital.index()] = value;
            state.info.latest_at[vital.index()] = ctx.t;
        }
    }
    if state.info.patient.is_none() {
        return;
    }
    for (vital, value) in obs.vitals.iter() {
        if !table_vitals[vital.index()] {
            continue;
        }
        // The classic `between`: a value in a gap between bands matches none.
        match match_band_exact(&state.info.bands[vital.index()], value) {
            None => out.unclassified.push(no_band(obs, vital, value)),
            Some(b) if b.alert_flag => {
                let (rule_key, message) = band_texts
                    .entry((vital, b.ref_id))
                    .or_insert_with(|| {
                        (
                            band_key(vital, b.ref_id).into(),
                            b.alert_message.as_str().into(),
                        )
                    })
                    .clone();
                // Classic semantics: every abnormal reading is its own alert. Its identity
                // is the reading's content (device, value, time), so two readings in the
                // same second are two alerts and a re-delivered one is the same alert.
                let active = Active::new(
                    reading_alert_id(
                        &obs.patient_id,
                        &rule_key,
                        obs.device_id.as_str(),
                        value,
                        obs.observed_at,
                    ),
                    obs.observed_at,
                    b.priority,
                    ctx.now,
                );
                let ev = EventContext::of_observation(
                    obs,
                    state.info.patient.as_deref(),
                    ctx.now,
                    ctx.version,
                );
                let detail = band_detail(b, vital, value, rule_key, message);
                out.events.push(event(
                    &ev,
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

fn standard(
    state: &mut PatientState,
    margins: &[f64; VITAL_COUNT],
    table_vitals: &[bool; VITAL_COUNT],
    lateness: Duration,
    ctx: &StepCtx<'_>,
    out: &mut Findings,
) {
    let rules = ctx.rules;
    let obs = ctx.obs;
    let t = ctx.t;
    // Out-of-order readings never overwrite a newer value.
    let mut newest = false;
    for (vital, value) in obs.vitals.iter() {
        let i = vital.index();
        if t >= state.info.latest_at[i] {
            state.info.latest[i] = value;
            state.info.latest_at[i] = t;
            newest = true;
        }
    }
    let scale = state.info.scale();
    // The patient's bands, held once for the whole observation (the rule steps borrow the
    // state mutably), not cloned per vital: two atomic operations per vital saved.
    let all_bands = state.info.bands.clone();
    for (vital, value) in obs.vitals.iter() {
        // Threshold bands.
        if rules.thresholds.enabled && table_vitals[vital.index()] && state.info.patient.is_some() {
            let margin = margins[vital.index()];
            let bands = &all_bands[vital.index()];
            match match_band(bands, value) {
                None => out.unclassified.push(no_band(obs, vital, value)),
                Some(band) => {
                    let flagged_at = |x: f64| match_band(bands, x).is_some_and(|b| b.alert_flag);
                    let cleared = !flagged_at(value - margin) && !flagged_at(value + margin);
                    let timing = Timing::at_once(rules.thresholds.persistence);
                    if band.alert_flag {
                        let key = CondKey::Band {
                            vital,
                            ref_id: band.ref_id,
                        };
                        step(state, key, true, false, Some(value), timing, ctx, out);
                    }
                    // Other band conditions of this vital see a value outside their band.
                    let mut i = 0;
                    while i < state.conditions.len() {
                        if let CondKey::Band { vital: v, ref_id } = state.conditions[i].key
                            && v == vital
                            && ref_id != band.ref_id
                        {
                            let key = state.conditions[i].key.clone();
                            step(state, key, false, cleared, Some(value), timing, ctx, out);
                        }
                        i += 1;
                    }
                }
            }
        }
        // Fixed limit rules.
        for (i, l) in rules.limits.iter().enumerate() {
            if l.vital != vital || !l.applies_to(scale) {
                continue;
            }
            let breached = l.breached(value);
            if breached || state.conditions.iter().any(|c| c.key == CondKey::Limit(i)) {
                step(
                    state,
                    CondKey::Limit(i),
                    breached,
                    l.cleared(value),
                    Some(value),
                    Timing::at_once(l.persistence),
                    ctx,
                    out,
                );
            }
        }
    }
    // NEWS2 scores the newest set: a reading that updated nothing changes no score.
    if rules.news2.enabled && newest {
        news2_step(state, ctx, out);
    }
    state.conditions.retain(|c| !c.is_forgettable(t, lateness));
}

fn news2_step(state: &mut PatientState, ctx: &StepCtx<'_>, out: &mut Findings) {
    let rules = ctx.rules;
    let t = ctx.t;
    let scored = news2_now(&state.info, rules, t);
    if let Some(s) = scored {
        // One row per instant and result: a re-delivered reading scores the same again
        // and adds nothing; a second vital at the same instant that changes it does.
        let repeat = state
            .info
            .news2
            .is_some_and(|p| p.at == s.at && p.score == s.score && p.assumed_air == s.assumed_air);
        state.info.news2 = scored;
        if !repeat {
            out.scores.push(ScoreRecord {
                patient_id: ctx.obs.patient_id.clone(),
                observed_at: ctx.obs.observed_at,
                score: s.score,
                scale: state.info.scale(),
                assumed_air: s.assumed_air,
            });
        }
    }
    let has_condition = state.conditions.iter().any(|c| c.key == CondKey::News2);
    let Some(s) = scored else {
        // Incomplete set. An open NEWS2 alert stays open (no alarm is silenced for want of
        // data), but says once that its inputs are stale.
        let Some(c) = news2_condition(state) else {
            return;
        };
        let Some(a) = c.active.as_mut().filter(|a| !a.inputs_stale) else {
            return;
        };
        a.inputs_stale = true;
        let a = a.clone();
        let mut detail = describe(&CondKey::News2, &state.info, rules, Some(a.priority), None);
        detail.message = format!(
            "NEWS2 cannot be scored: {} older than {} or never reported; take a full set of observations",
            stale_parameters(&state.info, rules, t).join(", "),
            rules.news2.max_observation_age
        )
        .into();
        let ev = EventContext::of_observation(
            ctx.obs,
            state.info.patient.as_deref(),
            ctx.now,
            ctx.version,
        );
        out.events.push(event(
            &ev,
            &detail,
            &a,
            AlertEventKind::InputsStale,
            a.state,
        ));
        return;
    };
    let prio = s.score.response.alarm_priority();
    let abnormal = prio.is_some();
    if !abnormal && !has_condition {
        return;
    }
    let timing = Timing {
        persistence: rules.news2.persistence,
        clear_after: rules.news2.clear_after,
        tolerance: rules.news2.tolerance,
    };
    step(
        state,
        CondKey::News2,
        abnormal,
        !abnormal,
        None,
        timing,
        ctx,
        out,
    );
    let Some(c) = news2_condition(state) else {
        return;
    };
    let Some(a) = c.active.as_mut() else { return };
    a.inputs_stale = false;
    // Escalation: the same episode got worse. Acknowledging a medium alert does not
    // acknowledge a high one: the alert is unacknowledged again and notifies.
    if let Some(p) = prio
        && p > a.priority
    {
        a.priority = p;
        a.state = AlertState::Triggered;
        a.last_notified = ctx.now;
        let a = a.clone();
        let ev = EventContext::of_observation(
            ctx.obs,
            state.info.patient.as_deref(),
            ctx.now,
            ctx.version,
        );
        let detail = describe(&CondKey::News2, &state.info, rules, Some(p), None);
        out.events
            .push(event(&ev, &detail, &a, AlertEventKind::Escalated, a.state));
    }
}

/// The patient's NEWS2 condition, if there is one.
fn news2_condition(state: &mut PatientState) -> Option<&mut Condition> {
    state
        .conditions
        .iter_mut()
        .find(|c| c.key == CondKey::News2)
}

/// Runs one condition's state machine and emits the event its transition causes.
#[allow(clippy::too_many_arguments)]
fn step(
    state: &mut PatientState,
    key: CondKey,
    abnormal: bool,
    cleared: bool,
    value: Option<f64>,
    timing: Timing,
    ctx: &StepCtx<'_>,
    out: &mut Findings,
) {
    let t = ctx.t;
    let idx = match state.conditions.iter().position(|c| c.key == key) {
        Some(i) => i,
        None => {
            state.conditions.push(Condition::new(key.clone()));
            state.conditions.len() - 1
        }
    };
    let transition = state.conditions[idx].observe(abnormal, cleared, t, timing);
    if transition == Transition::Nothing {
        return;
    }
    let detail = describe(&key, &state.info, ctx.rules, None, value);
    let ev =
        EventContext::of_observation(ctx.obs, state.info.patient.as_deref(), ctx.now, ctx.version);
    let cond = &mut state.conditions[idx];
    match transition {
        Transition::Triggered => {
            let episode_start = cond.pending_since.unwrap_or(t);
            let active = Active::new(
                alert_id(&ctx.obs.patient_id, &detail.rule_key, episode_start),
                episode_start,
                detail.priority,
                ctx.now,
            );
            out.events.push(event(
                &ev,
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
                    &ev,
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

/// The NEWS2 parameters (vitals other than oxygen status).
const NEWS2_VITALS: [Vital; 6] = [
    Vital::RespRate,
    Vital::Spo2,
    Vital::Systolic,
    Vital::HeartRate,
    Vital::Consciousness,
    Vital::TempC,
];

/// A vital's latest value, if it is no older than `max_age` at event time `t`.
fn fresh(info: &PatientInfo, v: Vital, t: Timestamp, max_age: Duration) -> Option<f64> {
    let i = v.index();
    let x = info.latest[i];
    (!x.is_nan() && t.since(info.latest_at[i]) <= max_age).then_some(x)
}

/// NEWS2 from the patient's latest vitals, if the set is complete and fresh. Oxygen status
/// follows `news2.oxygen_status_max_age` and `news2.unknown_oxygen`.
fn news2_now(info: &PatientInfo, rules: &RulesConfig, t: Timestamp) -> Option<Scored> {
    let cfg = &rules.news2;
    let get = |v: Vital| fresh(info, v, t, cfg.max_observation_age);
    let oxygen = fresh(info, Vital::OnOxygen, t, cfg.oxygen_status_max_age);
    let (on_oxygen, assumed_air) = match (oxygen, cfg.unknown_oxygen) {
        (Some(x), _) => (x >= 0.5, false),
        (None, UnknownOxygen::Air) => (false, true),
        (None, UnknownOxygen::Incomplete) => return None,
    };
    let input = News2Input {
        resp_rate: get(Vital::RespRate)?,
        spo2: get(Vital::Spo2)?,
        on_oxygen,
        systolic: get(Vital::Systolic)?,
        pulse: get(Vital::HeartRate)?,
        consciousness: Consciousness::from_code(get(Vital::Consciousness)?)?,
        temp_c: get(Vital::TempC)?,
        scale: info.scale(),
    };
    Some(Scored {
        score: news2::score(&input),
        assumed_air,
        at: t,
    })
}

/// The NEWS2 parameters that are missing or too old at `t`.
fn stale_parameters(info: &PatientInfo, rules: &RulesConfig, t: Timestamp) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = NEWS2_VITALS
        .iter()
        .filter(|&&v| fresh(info, v, t, rules.news2.max_observation_age).is_none())
        .map(|v| v.name())
        .collect();
    if rules.news2.unknown_oxygen == UnknownOxygen::Incomplete
        && fresh(info, Vital::OnOxygen, t, rules.news2.oxygen_status_max_age).is_none()
    {
        v.push(Vital::OnOxygen.name());
    }
    v
}

/// An event of an active patient condition that no reading caused (re-notification,
/// acknowledgement): stamped with `now`.
#[allow(clippy::too_many_arguments)]
fn condition_event(
    patient_id: &PatientId,
    info: Option<&PatientInfo>,
    patient: Option<&Listed>,
    key: &CondKey,
    active: &Active,
    rules: &RulesConfig,
    version: u32,
    now: Timestamp,
    kind: AlertEventKind,
) -> AlertEvent {
    let ctx = EventContext::of_state(patient_id, info, patient, now, version);
    let detail = match info {
        Some(info) => describe(key, info, rules, Some(active.priority), None),
        // An evicted patient: what the key alone says.
        None => EventDetail {
            rule: rule_family(key),
            rule_key: rule_key_text(key, rules).into(),
            priority: active.priority,
            vital: None,
            value: None,
            band: None,
            news2_score: None,
            message: "".into(),
        },
    };
    event(&ctx, &detail, active, kind, active.state)
}

fn band_key(vital: Vital, ref_id: u32) -> String {
    RuleKey::Band { vital, ref_id }.to_string()
}

fn rule_family(key: &CondKey) -> &'static str {
    match key {
        CondKey::Band { .. } => "threshold",
        CondKey::Limit(_) => "limit",
        CondKey::News2 => "news2",
    }
}

fn rule_key_text(key: &CondKey, rules: &RulesConfig) -> String {
    match key {
        CondKey::Band { vital, ref_id } => band_key(*vital, *ref_id),
        CondKey::Limit(i) => RuleKey::Limit(rules.limits[*i].name.clone()).to_string(),
        CondKey::News2 => RuleKey::News2.to_string(),
    }
}

fn band_detail(
    b: &ThresholdBand,
    vital: Vital,
    value: f64,
    rule_key: Arc<str>,
    message: Arc<str>,
) -> EventDetail<'_> {
    EventDetail {
        rule: "threshold",
        rule_key,
        priority: b.priority,
        vital: Some(vital),
        value: Some(value),
        band: Some(b),
        news2_score: None,
        message,
    }
}

fn stale_key(device: &DeviceId) -> String {
    RuleKey::DeviceStale(device.clone()).to_string()
}

/// What a stale-device alarm event needs from the engine besides the device itself.
struct DeviceRefs<'a> {
    directory: &'a Map<PatientId, Arc<Listed>>,
    states: &'a Map<PatientId, PatientState>,
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
        let mut ctx = EventContext::of_state(
            patient_id,
            self.states.get(patient_id.as_str()).map(|s| &s.info),
            self.directory.get(patient_id).map(|p| p.as_ref()),
            now,
            self.version,
        );
        ctx.observed_at = observed_at;
        ctx.device = Some(device);
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
        rule_key: stale_key(device).into(),
        priority,
        vital: None,
        value: None,
        band: None,
        news2_score: None,
        message: format!(
            "No data from device {device} for over {}",
            rules.stale_device.after
        )
        .into(),
    }
}

/// The rule, message and reference row behind a condition. `value`: the reading that
/// caused the event, if one did (else the patient's latest value).
fn describe<'a>(
    key: &CondKey,
    state: &'a PatientInfo,
    rules: &RulesConfig,
    priority: Option<Priority>,
    value: Option<f64>,
) -> EventDetail<'a> {
    match key {
        CondKey::Band { vital, ref_id } => {
            let band = state.bands[vital.index()]
                .iter()
                .find(|b| b.ref_id == *ref_id);
            EventDetail {
                rule: "threshold",
                rule_key: band_key(*vital, *ref_id).into(),
                priority: priority
                    .or(band.map(|b| b.priority))
                    .unwrap_or(Priority::Medium),
                vital: Some(*vital),
                value: value.or(Some(state.latest[vital.index()])),
                band,
                news2_score: None,
                message: band.map_or("".into(), |b| b.alert_message.as_str().into()),
            }
        }
        CondKey::Limit(i) => {
            let l = &rules.limits[*i];
            EventDetail {
                rule: "limit",
                rule_key: RuleKey::Limit(l.name.clone()).to_string().into(),
                priority: priority.unwrap_or(l.priority),
                vital: Some(l.vital),
                value: value.or(Some(state.latest[l.vital.index()])),
                band: None,
                news2_score: None,
                message: l.message.as_str().into(),
            }
        }
        CondKey::News2 => {
            let scored = state.news2;
            let prio = scored.and_then(|s| s.score.response.alarm_priority());
            EventDetail {
                rule: "news2",
                rule_key: "news2".into(),
                priority: priority.or(prio).unwrap_or(Priority::Low),
                vital: None,
                value: scored.map(|s| f64::from(s.score.total)),
                band: None,
                news2_score: scored.map(|s| s.score.total),
                message: scored
                    .map(|s| {
                        format!(
                            "{} (score {}){}",
                            s.score.response.describe(),
                            s.score.total,
                            if s.assumed_air {
                                "; oxygen status unknown, scored as air"
                            } else {
                                ""
                            }
                        )
                    })
                    .map_or_else(|| "NEWS2".into(), Arc::from),
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
    AlertEvent {
        alert_id: a.alert_id.clone(),
        event: kind,
        state,
        rule: Cow::Borrowed(d.rule),
        rule_key: d.rule_key.clone(),
        priority: if kind == AlertEventKind::Triggered {
            d.priority
        } else {
            a.priority
        },
        patient_id: ctx.patient_id.clone(),
        patient: ctx
            .patient
            .map_or_else(|| UNLISTED.clone(), |p| p.details.clone()),
        vital: d.vital,
        value: d.value.filter(|v| !v.is_nan()),
        bp: ctx.bp,
        heart_beat: ctx.heart_beat,
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
