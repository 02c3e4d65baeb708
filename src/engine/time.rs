//! Time as the engine sees it: nanoseconds on a monotonic clock, passed in
//! by the caller. The engine never reads a clock itself, which is what lets
//! tests drive time by hand.

/// Nanoseconds since an arbitrary, fixed origin (the shell uses process
/// start). Never decreases between calls.
pub type Nanos = u64;

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The window before a reservation's deadline in which a waiting client is
/// told DEADLINE_SOON.
pub const SAFETY_MARGIN_NS: Nanos = NANOS_PER_SEC;

/// Whole seconds as nanoseconds.
pub fn secs(s: u32) -> Nanos {
    u64::from(s) * NANOS_PER_SEC
}

/// Seconds left until `deadline`, truncated toward zero as C integer
/// division truncates; negative when the deadline has passed.
pub fn secs_until(deadline: Nanos, now: Nanos) -> i64 {
    // Rust's integer division truncates toward zero, like C's.
    (deadline as i64 - now as i64) / NANOS_PER_SEC as i64
}
