//! Event time: which readings are admitted, and the clock a replay runs on.
//!
//! Every reading has two times: `observed_at`, from the device's clock (what a clinician
//! reads), and `ingested_at`, from ours. Rules run on `observed_at`; everything that
//! measures how long something lasted (persistence, re-notification, stale devices,
//! observation age) reads one clock that the pipeline injects: the wall clock for live
//! sources, the [`StreamClock`] for a replay.
//!
//! Sources call [`TimeConfig::admit`] right after decoding, before anything reaches the
//! engine: a reading stamped too far in the future of the reference clock (a device whose
//! clock jumped to 2090) or implausibly old is a dead letter with a reason, never engine
//! input, because one such reading would otherwise stop persistence, freeze the patient's
//! latest vitals and drag a replay's clock decades ahead. Live, the reference is the
//! reading's own ingest time; in a replay it is the stream clock, so last year's files
//! replay fine.
//!
//! The stream clock is the newest event time seen, but a step forward larger than its
//! `jump` is taken only when a second reading confirms it: one outlier cannot drag the
//! clock ahead, while a real gap in a recording (Monday's file, then Wednesday's) moves it
//! after two readings.

use serde::{Deserialize, Serialize};

use crate::model::{Duration, Timestamp};

/// Event-time limits (`[time]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    /// A reading observed more than this after the reference clock (its ingest time live,
    /// the stream clock in a replay) is a dead letter. Default 5m: device clocks drift by
    /// seconds to a minute; minutes ahead is a broken clock, not physiology.
    pub max_future: Duration,
    /// A reading observed more than this before the reference clock is a dead letter.
    /// Default 1d: a day-old value is history, not monitoring; load history with `replay`,
    /// which judges age against the recording's own clock.
    pub max_age: Duration,
    /// Out-of-order tolerance. A reading up to this much older than its device's newest
    /// reading is evaluated, but can never resolve, restart or duplicate an episode that
    /// newer readings established; an older one is archived and counted, not evaluated.
    /// Default 2m: gateways re-send buffered readings within seconds to a minute.
    pub lateness: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            max_future: Duration::from_secs(300),
            max_age: Duration::from_secs(86_400),
            lateness: Duration::from_secs(120),
        }
    }
}

/// Which clock a reading was judged against (named in the dead letter's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The reading's ingest time (live sources).
    IngestTime,
    /// The replay's stream clock.
    StreamClock,
}

impl Reference {
    fn name(self) -> &'static str {
        match self {
            Reference::IngestTime => "ingest time",
            Reference::StreamClock => "stream clock",
        }
    }
}

/// Why a reading's time was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Observed too far after the reference clock.
    #[error(
        "implausible time: observed_at {observed} is {} ahead of the {} ({reference}); the limit is time.max_future = {limit}",
        .observed.since(*.reference).human(), .clock.name()
    )]
    TooFarAhead {
        /// The reading's observation time.
        observed: Timestamp,
        /// The clock it was judged against.
        reference: Timestamp,
        /// Which clock that is.
        clock: Reference,
        /// The configured limit.
        limit: Duration,
    },
    /// Observed too long before the reference clock.
    #[error(
        "implausible time: observed_at {observed} is {} older than the {} ({reference}); the limit is time.max_age = {limit}",
        .reference.since(*.observed).human(), .clock.name()
    )]
    TooOld {
        /// The reading's observation time.
        observed: Timestamp,
        /// The clock it was judged against.
        reference: Timestamp,
        /// Which clock that is.
        clock: Reference,
        /// The configured limit.
        limit: Duration,
    },
    /// A jump of the stream that no later reading confirmed.
    #[error(
        "implausible time: observed_at {observed} is {} away from the stream clock ({reference}) and no reading after it confirmed the jump",
        if .observed > .reference { .observed.since(*.reference) } else { .reference.since(*.observed) }.human()
    )]
    Outlier {
        /// The reading's observation time.
        observed: Timestamp,
        /// The stream clock when it was judged.
        reference: Timestamp,
    },
}

impl TimeConfig {
    /// Admits a reading observed at `observed` against a reference clock, or says why not.
    pub fn admit(
        &self,
        observed: Timestamp,
        reference: Timestamp,
        clock: Reference,
    ) -> Result<(), TimeError> {
        if observed.since(reference) > self.max_future {
            return Err(TimeError::TooFarAhead {
                observed,
                reference,
                clock,
                limit: self.max_future,
            });
        }
        if reference.since(observed) > self.max_age {
            return Err(TimeError::TooOld {
                observed,
                reference,
                clock,
                limit: self.max_age,
            });
        }
        Ok(())
    }

    /// Every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_future < Duration::from_secs(1) {
            p.push(format!(
                "time.max_future = {} is too short (minimum 1s): ordinary clock drift would turn readings into dead letters",
                self.max_future
            ));
        }
        if self.max_age < Duration::from_secs(60) {
            p.push(format!(
                "time.max_age = {} is too short (minimum 1m)",
                self.max_age
            ));
        }
        if self.lateness > self.max_age {
            p.push(format!(
                "time.lateness = {} is longer than time.max_age = {}: no reading that late is ever admitted",
                self.lateness, self.max_age
            ));
        }
        p
    }
}

/// What became of a time offered to the [`StreamClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// In line with the clock: use the reading now.
    Accepted,
    /// A jump: hold the reading until the next one confirms or refutes it.
    Deferred,
    /// A deferred jump that the next reading refuted: a dead letter
    /// ([`TimeError::Outlier`]).
    Outlier,
}

/// The answer to [`StreamClock::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// What to do with the reading just offered.
    pub this: Offered,
    /// What to do with the reading deferred earlier, if this offer settled it
    /// ([`Offered::Accepted`] or [`Offered::Outlier`]).
    pub earlier: Option<Offered>,
}

/// The clock of a replay: the newest event time seen, moved forward by more than `jump`
/// only when a second reading confirms the step.
#[derive(Debug, Clone)]
pub struct StreamClock {
    jump: Duration,
    newest: Option<Timestamp>,
    candidate: Option<Timestamp>,
}

impl StreamClock {
    /// A clock that takes steps up to `jump` at once and confirms larger ones.
    pub fn new(jump: Duration) -> Self {
        StreamClock {
            jump,
            newest: None,
            candidate: None,
        }
    }

    /// The clock's time: the newest confirmed event time (or the first reading's, until a
    /// second one confirms it).
    pub fn now(&self) -> Option<Timestamp> {
        self.newest.or(self.candidate)
    }

    /// The newest confirmed event time.
    pub fn confirmed(&self) -> Option<Timestamp> {
        self.newest
    }

    fn close(&self, a: Timestamp, b: Timestamp) -> bool {
        a.since(b) <= self.jump && b.since(a) <= self.jump
    }

    /// Offers one event time, in arrival order.
    pub fn offer(&mut self, t: Timestamp) -> Offer {
        let jumped = self.newest.is_none_or(|n| t.since(n) > self.jump);
        if !jumped {
            let n = self.newest.unwrap_or(t);
            self.newest = Some(n.max(t));
            return Offer {
                this: Offered::Accepted,
                // A jump candidate followed by a reading in line with the old clock was
                // a lone outlier.
                earlier: self.candidate.take().map(|_| Offered::Outlier),
            };
        }
        match self.candidate {
            Some(c) if self.close(c, t) => {
                self.candidate = None;
                let n = self.newest.map_or(c.max(t), |n| n.max(c).max(t));
                self.newest = Some(n);
                Offer {
                    this: Offered::Accepted,
                    earlier: Some(Offered::Accepted),
                }
            }
            Some(_) => {
                self.candidate = Some(t);
                Offer {
                    this: Offered::Deferred,
                    earlier: Some(Offered::Outlier),
                }
            }
            None => {
                self.candidate = Some(t);
                Offer {
                    this: Offered::Deferred,
                    earlier: None,
                }
            }
        }
    }

    /// Settles the reading still deferred at the end of the stream: accepted when it is
    /// the only one the clock ever saw, otherwise an unconfirmed outlier.
    pub fn finish(&mut self) -> Option<Offered> {
        self.candidate.take().map(|c| {
            if self.newest.is_none() {
                self.newest = Some(c);
                Offered::Accepted
            } else {
                Offered::Outlier
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_secs(1_764_000_000 + s)
    }

    #[test]
    fn admission_names_the_clock_and_the_limit() {
        let c = TimeConfig::default();
        assert!(c.admit(at(299), at(0), Reference::IngestTime).is_ok());
        assert!(c.admit(at(-86_400), at(0), Reference::IngestTime).is_ok());
        let e = c
            .admit(at(40 * 365 * 86_400), at(0), Reference::IngestTime)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ahead of the ingest time"), "{e}");
        assert!(e.contains("time.max_future = 5m"), "{e}");
        let e = c
            .admit(at(-2 * 86_400), at(0), Reference::StreamClock)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2d older than the stream clock"), "{e}");
    }

    #[test]
    fn one_outlier_cannot_drag_the_stream_clock() {
        let mut c = StreamClock::new(Duration::from_secs(300));
        assert_eq!(c.offer(at(0)).this, Offered::Deferred);
        assert_eq!(
            c.offer(at(1)),
            Offer {
                this: Offered::Accepted,
                earlier: Some(Offered::Accepted)
            }
        );
        // A device clock jumps 40 years: held, then refuted by the next ordinary reading.
        assert_eq!(c.offer(at(1_000_000_000)).this, Offered::Deferred);
        assert_eq!(c.now(), Some(at(1)));
        assert_eq!(
            c.offer(at(2)),
            Offer {
                this: Offered::Accepted,
                earlier: Some(Offered::Outlier)
            }
        );
        assert_eq!(c.now(), Some(at(2)));
        // A real gap in the recording: confirmed by the second reading after it.
        assert_eq!(c.offer(at(3600)).this, Offered::Deferred);
        assert_eq!(c.offer(at(3601)).earlier, Some(Offered::Accepted));
        assert_eq!(c.now(), Some(at(3601)));
        // Late readings never move it back.
        assert_eq!(c.offer(at(3000)).this, Offered::Accepted);
        assert_eq!(c.now(), Some(at(3601)));
    }

    #[test]
    fn a_wrong_first_reading_is_the_outlier() {
        let mut c = StreamClock::new(Duration::from_secs(300));
        assert_eq!(c.offer(at(1_000_000_000)).this, Offered::Deferred);
        assert_eq!(
            c.offer(at(0)),
            Offer {
                this: Offered::Deferred,
                earlier: Some(Offered::Outlier)
            }
        );
        assert_eq!(c.offer(at(1)).earlier, Some(Offered::Accepted));
        assert_eq!(c.now(), Some(at(1)));
        assert_eq!(c.finish(), None);
        let mut single = StreamClock::new(Duration::from_secs(300));
        single.offer(at(5));
        assert_eq!(single.finish(), Some(Offered::Accepted));
    }
}
