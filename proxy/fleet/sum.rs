//! The fleet's numbers for one rollout: the sum of every replica's counters of the current step.
//!
//! Replicas publish what they counted since they applied the step (the fleet's `epoch`). The
//! leader keeps the last reading of every source (a replica process) seen in the epoch, so:
//!
//! - a replica that leaves (its key expires with its lease) keeps its counts in the sum;
//! - a replica that restarts is a new process, a new source starting at zero, while the old
//!   process's last reading stays: nothing is counted twice and nothing goes backwards;
//! - readings of another epoch (a replica that has not applied the step yet) are not counted.
//!
//! [`FleetSum::total`] never decreases, across steps too (a finished epoch's total is carried),
//! which is what the engine's cumulative readings need: it diffs them against its step's start.

use std::collections::BTreeMap;

use super::state::{Reading, add_counts};
use crate::rollout::engine::{Latency, Sample};

/// A replica process: (node id, process id).
pub(crate) type Source = (String, String);

#[derive(Debug, Default)]
pub(crate) struct FleetSum {
    epoch: u64,
    sources: BTreeMap<Source, Reading>,
    /// Totals of earlier epochs, and of sources whose counters went back (a new incarnation
    /// under the same id).
    carried: Reading,
}

impl FleetSum {
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts counting `epoch`: what was counted so far is carried.
    pub(crate) fn begin_epoch(&mut self, epoch: u64) {
        if epoch == self.epoch {
            return;
        }
        for r in std::mem::take(&mut self.sources).into_values() {
            self.carried.add(&r);
        }
        self.epoch = epoch;
    }

    /// One source's reading of `epoch`. Readings of other epochs are ignored.
    pub(crate) fn observe(&mut self, source: Source, epoch: u64, reading: Reading) {
        if epoch != self.epoch {
            return;
        }
        match self.sources.get_mut(&source) {
            Some(last) if reading.covers(last) => *last = reading,
            Some(last) => {
                // Went back: not a later reading of the same counters. Keep what was counted.
                let old = std::mem::replace(last, reading);
                self.carried.add(&old);
            }
            None => {
                self.sources.insert(source, reading);
            }
        }
    }

    /// Everything counted: carried + every source's last reading of this epoch.
    #[cfg(test)]
    pub(crate) fn total(&self) -> Reading {
        let mut t = self.carried.clone();
        for r in self.sources.values() {
            t.add(r);
        }
        t
    }

    /// The counts of [`FleetSum::total`] without its histograms (cheap: read every tick).
    pub(crate) fn total_sample(&self) -> Sample {
        let mut t = self.carried.sample;
        for r in self.sources.values() {
            add_counts(&mut t, &r.sample);
        }
        t
    }

    /// This epoch's counts alone.
    pub(crate) fn window(&self) -> Sample {
        let mut t = Sample::default();
        for r in self.sources.values() {
            add_counts(&mut t, &r.sample);
        }
        t
    }

    /// The histograms of [`FleetSum::total`] (read only when a step is evaluated).
    pub(crate) fn total_latency(&self) -> Latency {
        let mut l = self.carried.latency.clone();
        for r in self.sources.values() {
            let _ = l.0.add(&r.latency.0);
            let _ = l.1.add(&r.latency.1);
        }
        l
    }

    /// What was counted before this epoch: the engine's base when it starts judging mid-step.
    pub(crate) fn carried(&self) -> Reading {
        self.carried.clone()
    }

    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::engine::Counts;

    fn r(canary: u64, failures: u64) -> Reading {
        let mut r = Reading::default();
        r.sample.canary = Counts {
            requests: canary,
            failures,
        };
        r
    }

    fn src(node: &str, process: &str) -> Source {
        (node.to_owned(), process.to_owned())
    }

    fn canary(s: &FleetSum) -> (u64, u64) {
        let c = s.total().sample.canary;
        assert_eq!(s.total_sample(), s.total().sample);
        (c.requests, c.failures)
    }

    #[test]
    fn three_replicas_add_up() {
        let mut s = FleetSum::default();
        s.begin_epoch(3);
        s.observe(src("a", "1"), 3, r(120, 1));
        s.observe(src("b", "1"), 3, r(110, 0));
        s.observe(src("c", "1"), 3, r(130, 2));
        s.observe(src("a", "1"), 3, r(125, 1));
        assert_eq!(canary(&s), (365, 3));
        assert_eq!(s.sources(), 3);
    }

    #[test]
    fn a_restarted_replica_starts_from_zero_without_losing_or_doubling() {
        let mut s = FleetSum::default();
        s.begin_epoch(1);
        s.observe(src("a", "p1"), 1, r(100, 4));
        s.observe(src("b", "p1"), 1, r(50, 0));
        // a restarts: new process, counters from zero; p1's key has expired but its counts stay.
        s.observe(src("a", "p2"), 1, r(3, 0));
        assert_eq!(canary(&s), (153, 4));
        s.observe(src("a", "p2"), 1, r(10, 1));
        assert_eq!(canary(&s), (160, 5));
    }

    #[test]
    fn counters_that_go_back_under_one_id_are_not_subtracted() {
        let mut s = FleetSum::default();
        s.begin_epoch(1);
        s.observe(src("a", "p"), 1, r(100, 2));
        s.observe(src("a", "p"), 1, r(5, 0));
        assert_eq!(canary(&s), (105, 2));
    }

    #[test]
    fn other_epochs_are_not_counted_and_the_total_never_falls() {
        let mut s = FleetSum::default();
        s.begin_epoch(1);
        s.observe(src("a", "p"), 1, r(100, 0));
        let before = canary(&s);
        s.begin_epoch(2);
        assert_eq!(canary(&s), before, "carried into the next epoch");
        assert_eq!(s.carried().sample.canary.requests, 100);
        // b has not applied epoch 2 yet: its late epoch-1 numbers are the old step's.
        s.observe(src("b", "p"), 1, r(40, 40));
        assert_eq!(canary(&s), before);
        s.observe(src("a", "p"), 2, r(7, 1));
        assert_eq!(canary(&s), (107, 1));
        assert_eq!(s.epoch(), 2);
    }
}
