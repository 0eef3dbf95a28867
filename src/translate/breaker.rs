//! A small circuit breaker: closed → open after `threshold` consecutive failures (or at once
//! on `trip`) → half-open after `cool_down`, letting one request through; its success closes
//! the circuit, its failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

struct Inner {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

pub struct Breaker {
    inner: Mutex<Inner>,
    threshold: u32,
    cool_down: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner {
                failures: 0,
                opened_at: None,
                probing: false,
            }),
            threshold: threshold.max(1),
            cool_down,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        let inner = self.lock();
        match inner.opened_at {
            None => State::Closed,
            Some(at) if at.elapsed() >= self.cool_down => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// May a request go through now? In half-open, only one probe at a time.
    pub fn allow(&self) -> bool {
        let mut inner = self.lock();
        match inner.opened_at {
            None => true,
            Some(at) if at.elapsed() >= self.cool_down && !inner.probing => {
                inner.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn success(&self) {
        let mut inner = self.lock();
        inner.failures = 0;
        inner.opened_at = None;
        inner.probing = false;
    }

    pub fn failure(&self) {
        let mut inner = self.lock();
        inner.failures += 1;
        inner.probing = false;
        if inner.failures >= self.threshold || inner.opened_at.is_some() {
            inner.opened_at = Some(Instant::now());
            metrics::counter!("translation_circuit_opened_total").increment(1);
        }
    }

    pub fn trip(&self) {
        let mut inner = self.lock();
        inner.failures = self.threshold;
        inner.probing = false;
        inner.opened_at = Some(Instant::now());
        metrics::counter!("translation_circuit_opened_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_half_opens_after_cool_down_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_millis(30));
        breaker.failure();
        breaker.failure();
        assert_eq!(breaker.state(), State::Closed);
        breaker.failure();
        assert_eq!(breaker.state(), State::Open);
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(breaker.allow(), "one probe");
        assert!(!breaker.allow(), "only one");
        breaker.failure();
        assert_eq!(
            breaker.state(),
            State::Open,
            "a failed probe opens it again"
        );
        std::thread::sleep(Duration::from_millis(35));
        assert!(breaker.allow());
        breaker.success();
        assert_eq!(breaker.state(), State::Closed);
        breaker.trip();
        assert_eq!(breaker.state(), State::Open);
    }
}
