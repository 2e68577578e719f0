//! The simulator source: simulated patients streaming in real time (`run` with
//! `simulator.enabled`).
//!
//! Where it sits: a source like any other. Each observation set is sent when the wall
//! clock reaches its observation time, stamped with its ingest time.

use vitalwatch_core::simulate::{SimConfig, Simulator};

use super::{SourceHandle, wall_now};

/// Streams `config`'s patients into `h` until `stop()` says so or the pipeline closes.
pub fn run_live(config: SimConfig, h: &SourceHandle, stop: &dyn Fn() -> bool) {
    let mut sim = Simulator::new(config);
    let mut next = sim.next_observation();
    while !stop() {
        let now = wall_now();
        let mut batch = Vec::new();
        while next.observed_at <= now {
            let mut o = std::mem::replace(&mut next, sim.next_observation());
            o.ingested_at = now;
            batch.push(o);
        }
        h.received(batch.len());
        if h.send(batch).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
