//! Back-off delays: for a failed job's release, and for reconnecting to the queue server.
//!
//! Both double with each attempt and add jitter, so that the jobs (or workers) that failed
//! together do not all come back at the same moment. The jitter only ever lengthens a delay,
//! by less than half of it, so each delay is at least the nominal one and always shorter than
//! the next attempt's nominal one: delays grow strictly while they are below their cap.

use std::time::Duration;

/// The longest delay a failed job is released with, in seconds: a week. Doubling from a few
/// seconds passes it after some 17 attempts; a job that has failed that often is better buried
/// (raise `--tries` no further) than left to wait longer between attempts than anyone watches.
pub const RELEASE_DELAY_SECS_MAX: u32 = 7 * 24 * 3600;

/// The first pause before reconnecting to the queue server: short, since a restarting server
/// is usually back within a fraction of a second.
pub const RECONNECT_DELAY_MS_MIN: u64 = 100;

/// The longest pause between reconnect attempts: a server that is down for long is retried
/// every ten seconds or so, which costs it nothing and brings the worker back soon after.
pub const RECONNECT_DELAY_MS_MAX: u64 = 10_000;

/// The delay, in whole seconds (the protocol's unit), to release a job with after its
/// `attempt`-th attempt failed (the first attempt is 1): `first` doubled `attempt - 1` times,
/// plus jitter of up to half of that, capped at [`RELEASE_DELAY_SECS_MAX`].
pub fn release_delay(first: Duration, attempt: u32, jitter: f64) -> u32 {
    let nominal = first.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(64) as i32);
    let delay = nominal * (1.0 + jitter.clamp(0.0, 1.0) / 2.0);
    // Whole seconds, rounded down, so that `first` = 1 gives 1, 2, 4 or 5, 8 to 11...
    delay.min(f64::from(RELEASE_DELAY_SECS_MAX)).floor() as u32
}

/// The pause before reconnect attempt `failures + 1`: [`RECONNECT_DELAY_MS_MIN`] doubled for
/// each failure so far, with jitter, at most about [`RECONNECT_DELAY_MS_MAX`].
pub fn reconnect_delay(failures: u32, jitter: f64) -> Duration {
    let nominal = RECONNECT_DELAY_MS_MIN.saturating_mul(1u64 << failures.min(20)).min(RECONNECT_DELAY_MS_MAX);
    let ms = nominal as f64 * (1.0 + jitter.clamp(0.0, 1.0) / 2.0);
    Duration::from_millis(ms as u64)
}

/// A random number in [0, 1) for the jitter.
pub fn jitter() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_delays_double_and_jitter_stays_below_the_next_step() {
        let first = Duration::from_secs(1);
        // Without jitter: the nominal delays.
        let nominal: Vec<u32> = (1..=6).map(|attempt| release_delay(first, attempt, 0.0)).collect();
        assert_eq!(nominal, [1, 2, 4, 8, 16, 32]);
        // With the most jitter: less than half again, so still below the next nominal delay.
        let most: Vec<u32> = (1..=6).map(|attempt| release_delay(first, attempt, 0.999_999)).collect();
        assert_eq!(most, [1, 2, 5, 11, 23, 47]);
        for attempt in 1..6 {
            assert!(most[attempt - 1] < nominal[attempt]);
        }
        assert_eq!(release_delay(Duration::from_secs(10), 3, 0.5), 50);
        assert_eq!(release_delay(Duration::from_millis(500), 1, 0.0), 0);
        assert_eq!(release_delay(Duration::ZERO, 9, 0.7), 0);
    }

    #[test]
    fn release_delays_are_capped() {
        assert_eq!(release_delay(Duration::from_secs(30), 40, 0.0), RELEASE_DELAY_SECS_MAX);
        assert_eq!(release_delay(Duration::from_secs(30), u32::MAX, 1.0), RELEASE_DELAY_SECS_MAX);
        // Attempt 0 cannot happen (attempts count from 1); it is treated as the first.
        assert_eq!(release_delay(Duration::from_secs(3), 0, 0.0), 3);
    }

    #[test]
    fn reconnect_delays_grow_to_their_cap() {
        let delays: Vec<u64> = (0..9).map(|failures| reconnect_delay(failures, 0.0).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(reconnect_delay(1000, 1.0), Duration::from_millis(15_000));
    }
}
