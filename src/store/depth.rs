//! The pipeline's depth, adapted to how far the database is.
//!
//! A deep pipeline is what makes a distant database cheap: with the database 5 ms away, a
//! connection needs dozens of statements in flight to stay busy. Near the database it only
//! hurts: the statements queue behind each other on one backend, and a backend that stalls
//! (descheduled, a spinlock) holds every one of them, which is the tail of the latency
//! (p99 4.7× p50 at depth 32 locally, 1.8× at depth 8: docs/bench/history.md, "Fewer
//! connections and an adaptive pipeline depth"). So the
//! depth in use is the pipe's size, not the configured maximum:
//!
//! - the *base* latency is the least a statement took over the last [`HORIZON`] windows (an
//!   unloaded round trip plus one execution; a stall that slows a whole window does not move
//!   it);
//! - the *service* time is how much longer a statement took for each statement ahead of it on
//!   its connection (a moving average);
//! - the depth is twice `base ÷ service` (the statements that keep the backend busy for one
//!   round trip, doubled for bursts: logins do not arrive evenly, and on a shared machine the
//!   service time also holds the client's own scheduling delays) plus a floor of [`FLOOR`],
//!   within `FLOOR..=max`, decided once per [`WINDOW`] statements.
//!
//! The depth starts at the maximum, and without queueing (no statement ever had one ahead of it)
//! it does not change.

use std::time::Duration;

/// Statements per window of the base latency; the depth changes at most once per window.
pub(super) const WINDOW: u32 = 256;

/// Windows whose least latency the base is taken over.
const HORIZON: usize = 4;

/// The least depth the estimate goes down to (or the configured maximum, if smaller).
pub(super) const FLOOR: usize = 8;

/// How many times the pipe's size is kept in flight.
const HEADROOM: f64 = 2.0;

/// Weight of a new sample in the moving average of the service time.
const SMOOTHING: f64 = 0.1;

/// The estimator of one database's pipeline depth.
pub(super) struct Estimate {
    floor: usize,
    max: usize,
    samples: u32,
    window_min: Option<Duration>,
    /// The least latency of each of the last windows, the newest at `windows % HORIZON`.
    previous_mins: [Option<Duration>; HORIZON],
    windows: usize,
    /// Seconds per statement ahead, when some statement had one ahead of it.
    service: Option<f64>,
}

impl Estimate {
    pub(super) fn new(max: usize) -> Self {
        Self {
            floor: FLOOR.min(max),
            max,
            samples: 0,
            window_min: None,
            previous_mins: [None; HORIZON],
            windows: 0,
            service: None,
        }
    }

    /// One statement answered after `latency` with `ahead` statements before it on its
    /// connection. At the end of a window: the depth to use from now on.
    pub(super) fn observe(&mut self, ahead: usize, latency: Duration) -> Option<usize> {
        let window_min = self.window_min.map_or(latency, |least| least.min(latency));
        self.window_min = Some(window_min);
        let base = self
            .previous_mins
            .iter()
            .flatten()
            .fold(window_min, |least, previous| least.min(*previous));
        if ahead > 0 {
            let sample = latency.saturating_sub(base).as_secs_f64() / ahead as f64;
            self.service = Some(
                self.service
                    .map_or(sample, |s| s + SMOOTHING * (sample - s)),
            );
        }
        self.samples += 1;
        if self.samples < WINDOW {
            return None;
        }
        self.samples = 0;
        self.windows = self.windows.wrapping_add(1);
        self.previous_mins[self.windows % HORIZON] = self.window_min.take();
        Some(target(base, self.service?, self.floor, self.max))
    }
}

/// `base ÷ service` statements keep a backend busy for one round trip; [`HEADROOM`] times that
/// plus `floor`, within `floor..=max`. No measurable service time (or a nonsensical one) gives
/// `max`.
pub(super) fn target(base: Duration, service: f64, floor: usize, max: usize) -> usize {
    let pipe = HEADROOM * base.as_secs_f64() / service;
    if !pipe.is_finite() || pipe >= max as f64 {
        return max;
    }
    // In 0..max here (service > 0 and finite, base ≥ 0): the cast cannot truncate.
    let pipe = pipe.ceil() as usize;
    (pipe + floor).clamp(floor, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: f64) -> Duration {
        Duration::from_secs_f64(value / 1000.0)
    }

    /// Feeds one window of statements: every `period`-th has nothing ahead (latency `base`),
    /// the others `ahead` statements ahead, each costing `service`.
    fn window(estimate: &mut Estimate, base: f64, service: f64, ahead: usize) -> Option<usize> {
        let mut last = None;
        for n in 0..WINDOW {
            let (ahead, latency) = if n % 16 == 0 {
                (0, ms(base))
            } else {
                (ahead, ms(base + service * ahead as f64))
            };
            last = estimate.observe(ahead, latency);
        }
        last
    }

    #[test]
    fn a_near_database_gets_a_shallow_pipeline_and_a_far_one_the_maximum() {
        // Local: 0.23 ms unloaded, 0.1 ms per statement ahead: 2.3 in the pipe, twice that
        // rounded up, plus the floor.
        let mut near = Estimate::new(32);
        assert_eq!(window(&mut near, 0.23, 0.1, 20), Some(13));
        // 5 ms away, same backend: 50 in the pipe, more than the maximum.
        let mut far = Estimate::new(32);
        assert_eq!(window(&mut far, 5.0, 0.1, 20), Some(32));
        // 2 ms away, 0.2 ms each: 10.25 in the pipe, 21 + 8.
        let mut middle = Estimate::new(32);
        assert_eq!(window(&mut middle, 2.05, 0.2, 20), Some(29));
    }

    #[test]
    fn the_depth_changes_once_per_window_and_not_without_queueing() {
        let mut estimate = Estimate::new(32);
        for _ in 1..WINDOW {
            assert_eq!(estimate.observe(3, ms(1.0)), None);
        }
        assert!(estimate.observe(3, ms(1.0)).is_some());
        // Never anything ahead: no service time, no opinion.
        let mut idle = Estimate::new(32);
        assert_eq!(window(&mut idle, 0.3, 0.1, 0), None);
    }

    #[test]
    fn a_window_slowed_by_a_stall_does_not_deepen_the_pipeline() {
        let mut estimate = Estimate::new(32);
        assert_eq!(window(&mut estimate, 0.23, 0.1, 20), Some(13));
        // A backend stall: every statement of the next window 7 ms late, none fast. The base
        // stays the earlier windows' least; the depth may only come down.
        let mut last = None;
        for _ in 0..WINDOW {
            last = estimate.observe(20, ms(7.25));
        }
        assert!(last.is_some_and(|depth| depth <= 13), "{last:?}");
    }

    #[test]
    fn the_floor_and_the_maximum_bound_it() {
        // A backend far slower than the round trip: one in the pipe, plus the floor.
        assert_eq!(target(ms(0.1), 0.010, FLOOR, 32), FLOOR + 1);
        assert_eq!(target(ms(0.1), 0.0001, FLOOR, 32), FLOOR + 2);
        assert_eq!(target(Duration::ZERO, 0.010, FLOOR, 32), FLOOR);
        // A configured maximum below the floor is the depth, whatever the estimate.
        let mut small = Estimate::new(4);
        assert_eq!(window(&mut small, 0.2, 0.1, 3), Some(4));
        // No service time at all (every statement as fast as the fastest): the maximum.
        assert_eq!(target(ms(0.2), 0.0, FLOOR, 32), 32);
        assert_eq!(target(ms(0.2), f64::NAN, FLOOR, 32), 32);
    }
}
