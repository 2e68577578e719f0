//! Outbox leases and adoption: every alert event reaches the external notifiers even when
//! the replica that recorded it dies.
//!
//! Where it sits: beside the notifier threads of a pipeline whose catalog is PostgreSQL
//! (shared by replicas). Each replica records its events under its own origin and its
//! notifiers deliver only that origin's outbox, so each event is sent by one replica
//! ([`PostgresStore`]). A replica holds a lease on its origin, renewed every third of
//! `pipeline.outbox_lease`. When it dies the lease lapses; another replica's adopter
//! claims it, delivers the dead replica's undelivered events to every external notifier
//! (`[[notifiers]]`: Kafka now), records the attempts under the dead origin, and lets the
//! lease go. The local notifiers (alert log, warehouse `alerts`, console) belong to a data
//! directory: they catch up when that replica restarts. A replica that comes back waits
//! until an adopter is done before its own notifiers start, so no event goes out twice.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use vitalwatch_connectors::notify::OutboxItem;
use vitalwatch_connectors::postgres::PostgresStore;
use vitalwatch_connectors::store::AlertStore;

use crate::config::NotifierConfig;
use crate::metrics::Metrics;
use crate::pipeline::{deliver, filtered_notifier};
use crate::routing::{Lane, Routes};

/// This replica's lease on its own outbox, and the adopter of dead replicas' outboxes.
#[derive(Debug)]
pub struct Leases {
    stop: flume::Sender<()>,
    thread: JoinHandle<()>,
}

impl Leases {
    /// Claims replica `origin`'s outbox in the catalog at `url`, waiting while another
    /// replica is delivering it (this one was down); then renews it and looks for dead
    /// replicas' outboxes every third of `ttl` on a thread of its own.
    pub fn start(
        url: &str,
        origin: &str,
        ttl: Duration,
        notifiers: Vec<NotifierConfig>,
        routes: Arc<Routes>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Leases> {
        let store = PostgresStore::connect(url)
            .context("cannot open the catalog for outbox leases")?
            .with_origin(origin);
        // An adopter renews the lease with every batch and lets go when done; one that
        // died itself lets it lapse after `ttl`.
        let deadline = Instant::now() + ttl * 20;
        let mut said = false;
        while !store.claim_outbox(origin, ttl)? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "another replica has been delivering this replica's ({origin}) alert events for over {:?}; is a second vitalwatch using this data directory's id?",
                ttl * 20
            );
            if !said {
                tracing::info!(
                    replica = origin,
                    "another replica is delivering this replica's undelivered alert events; waiting for it to finish"
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (stop, rx) = flume::bounded::<()>(1);
        let (url, origin) = (url.to_owned(), origin.to_owned());
        let thread = std::thread::Builder::new()
            .name("outbox-leases".into())
            .spawn(move || {
                let every = ttl / 3;
                while let Err(flume::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match store.claim_outbox(&origin, ttl) {
                        Ok(true) => {}
                        Ok(false) => {
                            metrics.outbox_lease_lost.fetch_add(1, Relaxed);
                            tracing::error!(replica = %origin, "this replica's outbox lease was taken by another replica (this one stalled longer than pipeline.outbox_lease): alert events may be delivered twice");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot renew the outbox lease");
                        }
                    }
                    for n in &notifiers {
                        if let Err(e) = adopt_all(&store, &url, n, &routes, ttl, &metrics) {
                            tracing::warn!(error = %format!("{e:#}"), "cannot deliver a dead replica's alert events; trying again");
                        }
                    }
                }
                // Stopped: every notifier has delivered what it could. Letting go at once
                // means another replica delivers whatever is left without waiting.
                if let Err(e) = store.release_outbox(&origin) {
                    tracing::warn!(error = %e, "cannot release the outbox lease");
                }
            })?;
        Ok(Leases { stop, thread })
    }

    /// Stops renewing and adopting, and releases this replica's lease.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.thread.join();
    }
}

/// Delivers, to notifier `n`, the undelivered outbox of every replica whose lease lapsed.
fn adopt_all(
    store: &PostgresStore,
    url: &str,
    n: &NotifierConfig,
    routes: &Arc<Routes>,
    ttl: Duration,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    for lane in Lane::BOTH {
        let name = lane.cursor_name(n.name());
        for dead in store.orphaned_outboxes(&name)? {
            if !store.claim_outbox(&dead, ttl)? {
                continue; // another replica got there first
            }
            let r = adopt(store, url, n, lane, routes, &dead, ttl, metrics);
            store.release_outbox(&dead)?;
            let delivered = r?;
            tracing::warn!(replica = %dead, notifier = %name, delivered, "delivered the alert events of a replica that stopped renewing its outbox lease");
        }
    }
    Ok(())
}

/// Delivers replica `dead`'s outbox to `n` from its cursor to the end, renewing the
/// lease with every batch; returns how many events were delivered.
#[allow(clippy::too_many_arguments)]
fn adopt(
    leases: &PostgresStore,
    url: &str,
    n: &NotifierConfig,
    lane: Lane,
    routes: &Arc<Routes>,
    dead: &str,
    ttl: Duration,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<u64> {
    let mut theirs = PostgresStore::connect(url)?.with_origin(dead);
    let silences: Box<dyn crate::pipeline::Store> = Box::new(PostgresStore::connect(url)?);
    let mut notifier = filtered_notifier(n, lane, routes, Some(silences), metrics)?;
    let mut cursor = theirs.cursor(notifier.name())?;
    let (records, attempts) = flume::unbounded();
    let mut delivered = 0;
    loop {
        let batch: Vec<OutboxItem> = theirs
            .outbox_after(cursor, notifier.max_batch())?
            .into_iter()
            .map(OutboxItem::from_entry)
            .collect();
        let Some(last) = batch.last().map(|i| i.seq) else {
            return Ok(delivered);
        };
        // A few tries, then the lease goes back and the next round tries again.
        let done = deliver(notifier.as_mut(), &records, &batch, true, metrics);
        let tried: Vec<_> = attempts.try_iter().collect();
        theirs.record_deliveries(&tried)?;
        if done.is_none() {
            anyhow::bail!("notifier {} keeps failing", notifier.name());
        }
        // Each lane walks every entry; count the ones this lane carries.
        let carried = batch
            .iter()
            .filter(|i| i.event().is_ok_and(|e| lane.carries(e)))
            .count() as u64;
        delivered += carried;
        metrics.outbox_adopted.fetch_add(carried, Relaxed);
        cursor = last;
        if !leases.claim_outbox(dead, ttl)? {
            anyhow::bail!("lost the lease on replica {dead}'s outbox");
        }
    }
}
