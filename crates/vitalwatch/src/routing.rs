//! Routing and escalation: which alert events reach which notifier.
//!
//! Where it sits: between the outbox and each external notifier (`[[notifiers]]`), as a
//! wrapper ([`Routed`]) that lets through only the events a `[[routes]]` item sends to
//! that notifier; the rest are skipped (the notifier's cursor moves past them). Without
//! routes every notifier gets every event.
//!
//! A route matches an event by ward, priority, rule family and patient (an empty list
//! matches any). Its tiers escalate: a tier with `after = "0s"` gets every event of the
//! alerts the route matches; a later tier joins once an alert has been open and
//! unacknowledged for `after` (measured from the episode's start to the event): it gets
//! the re-notifications (every `rules.renotify_after`) and escalations from then on, and
//! the acknowledgement and resolution of any alert that lasted that long, so whoever was
//! called hears the all-clear. The engine's re-notification is the clock: a tier is
//! called at the first re-notification after its `after`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vitalwatch_connectors::notify::{Notifier, NotifyError, OutboxItem};
use vitalwatch_connectors::store::{AlertStore, Silence};
use vitalwatch_core::alert::{AlertEvent, AlertEventKind, AlertState};
use vitalwatch_core::model::Duration as VwDuration;

/// One `[[routes]]` item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// The route's name (in logs and config errors).
    pub name: String,
    /// Wards (`admitted_ward`) it matches; empty: any.
    pub wards: Vec<String>,
    /// Priorities (`low`, `medium`, `high`) it matches; empty: any.
    pub priorities: Vec<String>,
    /// Rule families (`threshold`, `news2`, `limit`, `device_stale`, ...) it matches;
    /// empty: any.
    pub rules: Vec<String>,
    /// Patient ids it matches; empty: any.
    pub patients: Vec<String>,
    /// Escalation tiers, in order of `after`.
    pub tiers: Vec<TierConfig>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: "route".into(),
            wards: Vec::new(),
            priorities: Vec::new(),
            rules: Vec::new(),
            patients: Vec::new(),
            tiers: Vec::new(),
        }
    }
}

/// One escalation tier of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// How long an alert stays open and unacknowledged before this tier is called.
    pub after: VwDuration,
    /// The notifiers (`[[notifiers]]` names) of this tier.
    pub notify: Vec<String>,
}

impl Default for TierConfig {
    fn default() -> Self {
        TierConfig {
            after: VwDuration::ZERO,
            notify: Vec::new(),
        }
    }
}

impl RouteConfig {
    /// Everything wrong with this route, given the configured notifier names.
    pub fn problems(&self, i: usize, notifiers: &[&str]) -> Vec<String> {
        let at = format!("routes[{i}] ({})", self.name);
        let mut p = Vec::new();
        if self.tiers.is_empty() {
            p.push(format!("{at}: a route needs at least one tier"));
        }
        for pr in &self.priorities {
            if vitalwatch_core::alert::Priority::parse(pr).is_none() {
                p.push(format!("{at}: priority {pr:?} is not low, medium or high"));
            }
        }
        let mut last = VwDuration::ZERO;
        for (t, tier) in self.tiers.iter().enumerate() {
            if tier.after < last {
                p.push(format!(
                    "{at}: tier {} comes before tier {t} (after must not decrease)",
                    t + 1
                ));
            }
            last = tier.after;
            if tier.notify.is_empty() {
                p.push(format!("{at}: tier {} notifies nobody", t + 1));
            }
            for n in &tier.notify {
                if !notifiers.contains(&n.as_str()) {
                    p.push(format!(
                        "{at}: tier {} names no [[notifiers]] item {n:?}",
                        t + 1
                    ));
                }
            }
        }
        p
    }

    fn matches(&self, e: &AlertEvent) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&self.wards, &e.patient.admitted_ward)
            && any(&self.priorities, e.priority.as_str())
            && any(&self.rules, &e.rule)
            && any(&self.patients, e.patient_id.as_str())
    }
}

/// The configured routes.
#[derive(Debug, Clone, Default)]
pub struct Routes(pub Vec<RouteConfig>);

impl Routes {
    /// Whether `notifier` gets `e`.
    pub fn allows(&self, notifier: &str, e: &AlertEvent) -> bool {
        let open_for = e.alert_generated_time.since(e.episode_start);
        let all_clear = matches!(
            e.event,
            AlertEventKind::Acknowledged | AlertEventKind::Resolved
        );
        self.0.iter().filter(|r| r.matches(e)).any(|r| {
            r.tiers.iter().any(|t| {
                t.notify.iter().any(|n| n == notifier)
                    && (t.after == VwDuration::ZERO
                        || (open_for >= t.after && (all_clear || e.state == AlertState::Triggered)))
            })
        })
    }
}

/// Which priorities a notifier instance delivers. Every external notifier runs as two
/// lanes, each with its own cursor and thread, so a high-priority alarm never waits
/// behind a backlog of lower ones (a slow mail server, a retried webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// High-priority events only; its cursor and records are kept as `NAME/high`.
    High,
    /// Every other event; kept as `NAME`.
    Other,
}

impl Lane {
    /// Both lanes.
    pub const BOTH: [Lane; 2] = [Lane::High, Lane::Other];

    /// The cursor name of notifier `name`'s lane.
    pub fn cursor_name(self, name: &str) -> String {
        match self {
            Lane::High => format!("{name}/high"),
            Lane::Other => name.to_owned(),
        }
    }

    /// Whether this lane delivers `e`.
    pub fn carries(self, e: &AlertEvent) -> bool {
        (e.priority == vitalwatch_core::alert::Priority::High) == (self == Lane::High)
    }
}

/// A notifier lane that gets only its priorities ([`Lane`]), what the routes send it
/// ([`Routes::allows`]) and what no silence holds back ([`Silence::holds_back`]); the
/// rest is skipped, its cursor moves on.
pub struct Filtered {
    inner: Box<dyn Notifier>,
    lane: Lane,
    /// The lane's cursor name.
    name: String,
    /// `None`: no `[[routes]]`, every event.
    routes: Option<Arc<Routes>>,
    /// Where silences are read (`None`: none apply, e.g. adopting a dead replica's outbox).
    store: Option<Box<dyn crate::pipeline::Store>>,
    /// The silences in force, read at most once a second.
    cache: Option<(std::time::Instant, Vec<Silence>)>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Filtered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filtered")
            .field("notifier", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl Filtered {
    /// `inner` behind `routes` (empty: none) and the silences in `store`.
    pub fn new(
        inner: Box<dyn Notifier>,
        lane: Lane,
        routes: Arc<Routes>,
        store: Option<Box<dyn crate::pipeline::Store>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Filtered {
            name: lane.cursor_name(inner.name()),
            lane,
            inner,
            routes: (!routes.0.is_empty()).then_some(routes),
            store,
            cache: None,
            metrics,
        }
    }

    /// Whether `e` is this lane's and its routes send it here.
    fn routed(&self, e: &AlertEvent) -> bool {
        self.lane.carries(e)
            && self
                .routes
                .as_ref()
                .is_none_or(|r| r.allows(self.inner.name(), e))
    }

    /// The silences in force now.
    fn silences(&mut self) -> Vec<Silence> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let stale = self
            .cache
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
        if stale {
            // A catalog that cannot be read holds nothing back: an alarm too many beats
            // one silenced by accident.
            let list = store
                .silences(Some(crate::pipeline::wall_now()))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read silences; none applied");
                    Vec::new()
                });
            self.cache = Some((std::time::Instant::now(), list));
        }
        self.cache
            .as_ref()
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

impl Notifier for Filtered {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    fn linger(&self) -> Duration {
        self.inner.linger()
    }

    fn resume(&mut self, cursor: u64, store: &dyn AlertStore) -> Result<u64, NotifyError> {
        self.inner.resume(cursor, store)
    }

    fn deliver(&mut self, batch: &[OutboxItem]) -> Result<(), NotifyError> {
        let silences = self.silences();
        let now = crate::pipeline::wall_now();
        let mut pass = Vec::with_capacity(batch.len());
        for item in batch {
            let e = item.event()?;
            if !self.routed(e) {
                continue;
            }
            if let Some(s) = silences.iter().find(|s| s.holds_back(e, now)) {
                self.metrics
                    .notifications_silenced
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(notifier = %self.name, alert = %e.alert_id, silence = s.id, "held back by a silence");
                continue;
            }
            pass.push(item.clone());
        }
        if pass.is_empty() {
            return Ok(());
        }
        self.inner.deliver(&pass)
    }

    fn went_out(&self, item: &OutboxItem) -> bool {
        self.inner.went_out(item)
    }

    fn takes(&self, item: &OutboxItem) -> bool {
        let Ok(e) = item.event() else {
            return false;
        };
        let now = crate::pipeline::wall_now();
        self.routed(e)
            && !self
                .cache
                .as_ref()
                .is_some_and(|(_, l)| l.iter().any(|s| s.holds_back(e, now)))
    }

    fn send_test(&mut self, item: &OutboxItem) -> Result<String, NotifyError> {
        // A test message goes out whatever the routes and silences say.
        self.inner.send_test(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalwatch_core::model::Timestamp;

    fn event(ward: &str, kind: AlertEventKind, state: AlertState, open_secs: i64) -> AlertEvent {
        let mut e = vitalwatch_connectors::store::contract::sample_event();
        std::sync::Arc::make_mut(&mut e.patient).admitted_ward = ward.into();
        e.event = kind;
        e.state = state;
        e.episode_start = Timestamp(0);
        e.alert_generated_time = Timestamp(open_secs * 1_000_000);
        e
    }

    #[test]
    fn tiers_join_when_an_alert_stays_unacknowledged_and_hear_the_all_clear() {
        let routes = Routes(vec![RouteConfig {
            name: "icu".into(),
            wards: vec!["5".into()],
            priorities: vec!["high".into()],
            tiers: vec![
                TierConfig {
                    after: VwDuration::ZERO,
                    notify: vec!["nurse".into()],
                },
                TierConfig {
                    after: VwDuration::from_secs(300),
                    notify: vec!["charge".into()],
                },
            ],
            ..RouteConfig::default()
        }]);
        use AlertEventKind::{Escalated, Renotified, Resolved, Triggered};
        let triggered = event("5", Triggered, AlertState::Triggered, 0);
        assert!(routes.allows("nurse", &triggered));
        assert!(!routes.allows("charge", &triggered), "tier 2 waits");
        assert!(
            !routes.allows("nurse", &event("2", Triggered, AlertState::Triggered, 0)),
            "another ward"
        );
        let early = event("5", Renotified, AlertState::Triggered, 120);
        assert!(routes.allows("nurse", &early) && !routes.allows("charge", &early));
        let late = event("5", Renotified, AlertState::Triggered, 360);
        assert!(
            routes.allows("charge", &late),
            "unacknowledged for 6 min: tier 2 is called"
        );
        assert!(
            routes.allows("charge", &event("5", Resolved, AlertState::Resolved, 400)),
            "all clear"
        );
        assert!(
            !routes.allows("charge", &event("5", Resolved, AlertState::Resolved, 60)),
            "a short alert never reached tier 2"
        );
        assert!(
            !routes.allows(
                "charge",
                &event("5", Escalated, AlertState::Acknowledged, 600)
            ),
            "acknowledged: no escalation call"
        );
        assert!(!routes.allows("pager", &late), "in no route: nothing");
    }
}
