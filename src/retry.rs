//! Retrying a transient failure: the one backoff formula and the one bounded retry loop that
//! every provider client and job uses (docs/PROVIDERS.md §8).
//!
//! The caller's attempt says whether its failure is worth another try
//! ([`Failure::Transient`]) or final ([`Failure::Final`]); [`run`] sleeps only *between*
//! attempts (never after the last one), never tries more than [`Policy::attempts`] times, and
//! returns the last error as it was.
//!
//! Jitter is "equal jitter": the wait before retry `n` is drawn uniformly from
//! `[ceiling / 2, ceiling]`, where `ceiling = base × 2^(n−1)`, capped at `max`. Half of the
//! ceiling is always waited (a dependency that is down is not hammered), and the other half
//! is random, so retries from many calls that failed together spread out instead of arriving
//! together again.

use std::fmt::Display;
use std::time::Duration;

use rand::Rng as _;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first included (at least one is always made).
    pub attempts: u32,
    /// The ceiling of the first wait; each later ceiling doubles.
    pub base: Duration,
    /// No wait's ceiling exceeds this.
    pub max: Duration,
}

impl Policy {
    /// Idempotent provider requests while a call or a job waits: 200 ms doubling, at most
    /// 5 s between attempts.
    pub const fn provider(attempts: u32) -> Self {
        Self {
            attempts,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }

    /// The wait before retry `retry` (1 = the wait after the first failed attempt), with
    /// equal jitter (see the module documentation).
    pub fn delay(&self, retry: u32) -> Duration {
        backoff(self.base, self.max, retry)
    }
}

/// The ceiling `base × 2^(retry−1)` capped at `max`, with equal jitter: uniformly in
/// `[ceiling / 2, ceiling]`. `retry` counts from 1; 0 is treated as 1.
pub fn backoff(base: Duration, max: Duration, retry: u32) -> Duration {
    let ceiling = ceiling(base, max, retry);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The un-jittered ceiling of the wait before retry `retry`.
pub fn ceiling(base: Duration, max: Duration, retry: u32) -> Duration {
    let exponent = retry.clamp(1, 31) - 1;
    base.saturating_mul(2u32.saturating_pow(exponent)).min(max)
}

/// What one failed attempt means for the next.
#[derive(Debug)]
pub enum Failure<E> {
    /// Worth another attempt (a timeout, a 5xx, a 429, a lost connection).
    Transient(E),
    /// Retrying cannot help (a 4xx, bad input, a quota): returned at once.
    Final(E),
}

impl<E> Failure<E> {
    pub fn into_inner(self) -> E {
        match self {
            Failure::Transient(error) | Failure::Final(error) => error,
        }
    }
}

/// Runs `attempt` (given its 1-based number) until it succeeds, fails permanently, or
/// `policy.attempts` attempts have failed; waits [`Policy::delay`] between attempts, and
/// never after the last. Each retry is logged with `what` and the error.
pub async fn run<T, E, Op, Fut>(policy: &Policy, what: &str, attempt: Op) -> Result<T, E>
where
    E: Display,
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    run_with(policy, what, attempt, tokio::time::sleep).await
}

/// [`run`] with the sleeping function given (tests record the waits instead of waiting).
pub async fn run_with<T, E, Op, Fut, Sleep, SleepFut>(
    policy: &Policy,
    what: &str,
    mut attempt: Op,
    mut sleep: Sleep,
) -> Result<T, E>
where
    E: Display,
    Op: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
    Sleep: FnMut(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    let attempts = policy.attempts.max(1);
    let mut number = 1;
    loop {
        match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(Failure::Transient(error)) if number < attempts => {
                let delay = policy.delay(number);
                tracing::warn!(%error, attempt = number, of = attempts, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                sleep(delay).await;
                number += 1;
            }
            Err(failure) => return Err(failure.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    const POLICY: Policy = Policy {
        attempts: 4,
        base: Duration::from_millis(100),
        max: Duration::from_millis(500),
    };

    /// Runs `outcomes` (one per attempt, `None` = success) through [`run_with`], recording
    /// the attempts made and the waits asked for.
    fn drive(
        policy: Policy,
        outcomes: Vec<Option<Failure<&'static str>>>,
    ) -> (Result<u32, &'static str>, Vec<u32>, Vec<Duration>) {
        let made = RefCell::new(Vec::new());
        let waits = RefCell::new(Vec::new());
        let outcomes = RefCell::new(outcomes.into_iter());
        let result = futures_util::FutureExt::now_or_never(run_with(
            &policy,
            "the test operation",
            |number| {
                made.borrow_mut().push(number);
                let outcome = outcomes.borrow_mut().next().expect("an attempt too many");
                async move {
                    match outcome {
                        None => Ok(number),
                        Some(failure) => Err(failure),
                    }
                }
            },
            |delay| {
                waits.borrow_mut().push(delay);
                async {}
            },
        ))
        .expect("no real sleeping");
        (result, made.into_inner(), waits.into_inner())
    }

    #[test]
    fn never_sleeps_after_the_last_attempt() {
        let (result, made, waits) = drive(
            POLICY,
            vec![
                Some(Failure::Transient("a")),
                Some(Failure::Transient("b")),
                Some(Failure::Transient("c")),
                Some(Failure::Transient("d")),
            ],
        );
        assert_eq!(result, Err("d"), "the last error, as it was");
        assert_eq!(made, [1, 2, 3, 4]);
        assert_eq!(
            waits.len(),
            3,
            "one wait between each two attempts, none after"
        );
    }

    #[test]
    fn attempts_are_bounded_and_at_least_one() {
        // `drive` panics on an attempt beyond the outcomes given: four outcomes, four attempts.
        let (_, made, _) = drive(
            POLICY,
            (0..4).map(|_| Some(Failure::Transient("x"))).collect(),
        );
        assert_eq!(made.len(), 4);
        let once = Policy {
            attempts: 0,
            ..POLICY
        };
        let (result, made, waits) = drive(once, vec![Some(Failure::Transient("x"))]);
        assert_eq!((result, made.len(), waits.len()), (Err("x"), 1, 0));
    }

    #[test]
    fn a_success_after_transient_failures_is_returned() {
        let (result, made, waits) = drive(
            POLICY,
            vec![
                Some(Failure::Transient("a")),
                Some(Failure::Transient("b")),
                None,
            ],
        );
        assert_eq!(result, Ok(3));
        assert_eq!((made.len(), waits.len()), (3, 2));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let (result, made, waits) = drive(POLICY, vec![Some(Failure::Final("no"))]);
        assert_eq!((result, made.len(), waits.len()), (Err("no"), 1, 0));
        let (result, made, waits) = drive(
            POLICY,
            vec![Some(Failure::Transient("busy")), Some(Failure::Final("no"))],
        );
        assert_eq!((result, made.len(), waits.len()), (Err("no"), 2, 1));
    }

    #[test]
    fn waits_double_and_are_capped() {
        let base = POLICY.base;
        let max = POLICY.max;
        assert_eq!(ceiling(base, max, 0), Duration::from_millis(100));
        assert_eq!(ceiling(base, max, 1), Duration::from_millis(100));
        assert_eq!(ceiling(base, max, 2), Duration::from_millis(200));
        assert_eq!(ceiling(base, max, 3), Duration::from_millis(400));
        assert_eq!(ceiling(base, max, 4), Duration::from_millis(500));
        assert_eq!(ceiling(base, max, u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_within_half_the_ceiling_and_the_ceiling() {
        for retry in 1..=6 {
            let top = ceiling(POLICY.base, POLICY.max, retry);
            let samples: Vec<Duration> = (0..2000).map(|_| POLICY.delay(retry)).collect();
            assert!(
                samples.iter().all(|d| *d >= top / 2 && *d <= top),
                "retry {retry}: every wait in [{:?}, {top:?}]",
                top / 2
            );
            // Random, not constant: the waits spread over most of the range.
            let low = samples.iter().min().unwrap();
            let high = samples.iter().max().unwrap();
            assert!(
                *high - *low > (top / 2).mul_f64(0.8),
                "retry {retry}: spread {low:?}..{high:?}"
            );
        }
    }

    #[test]
    fn the_waits_between_attempts_follow_the_policy() {
        let (_, _, waits) = drive(
            POLICY,
            (0..4).map(|_| Some(Failure::Transient("x"))).collect(),
        );
        for (index, wait) in waits.iter().enumerate() {
            let top = ceiling(POLICY.base, POLICY.max, index as u32 + 1);
            assert!(*wait >= top / 2 && *wait <= top, "wait {index}: {wait:?}");
        }
    }
}
