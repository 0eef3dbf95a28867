//! The interpreted calls whose legs stream to this process: each leg's bridge registers the
//! queue of what is to be spoken *to* its party, and the other leg's bridge hands its
//! party's final turns to that queue — never to its own, so nobody hears their own words.
//! Utterances are numbered per call here, so the two legs' utterances never collide.
//!
//! Both legs of a call must stream to the same replica (docs/CALLS.md): a turn whose
//! listener is not here is not spoken, and is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use uuid::Uuid;

use super::playout::Utterance;
use crate::calls::legs::Role;

#[derive(Default)]
pub struct Hub {
    calls: Mutex<HashMap<Uuid, CallEntry>>,
    next_registration: AtomicU64,
}

struct CallEntry {
    next_seq: i32,
    legs: Vec<(Role, u64, mpsc::Sender<Utterance>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The other party's stream is not (or no longer) live in this process.
    NoListener,
    /// The listener's queue is full (they are far behind): dropped.
    Full,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CallEntry>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `role`'s bridge is live: utterances for that party go to `queue` until the
    /// registration is dropped. `first_seq` is the next utterance number not yet stored for
    /// the call (a re-attached leg continues the numbering).
    pub fn register(
        self: &Arc<Self>,
        call_id: Uuid,
        role: Role,
        queue: mpsc::Sender<Utterance>,
        first_seq: i32,
    ) -> Registration {
        let id = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let mut calls = self.lock();
        let entry = calls.entry(call_id).or_insert(CallEntry {
            next_seq: first_seq,
            legs: Vec::new(),
        });
        entry.next_seq = entry.next_seq.max(first_seq);
        entry.legs.retain(|(r, _, _)| *r != role);
        entry.legs.push((role, id, queue));
        Registration {
            hub: self.clone(),
            call_id,
            id,
        }
    }

    /// Numbers `utterance` and queues it to be spoken to `to`.
    pub fn deliver(&self, call_id: Uuid, to: Role, mut utterance: Utterance) -> Delivery {
        let mut calls = self.lock();
        let Some(entry) = calls.get_mut(&call_id) else {
            return Delivery::NoListener;
        };
        let Some((_, _, queue)) = entry.legs.iter().find(|(r, _, _)| *r == to) else {
            return Delivery::NoListener;
        };
        utterance.seq = entry.next_seq;
        match queue.try_send(utterance) {
            Ok(()) => {
                entry.next_seq += 1;
                Delivery::Queued
            }
            Err(TrySendError::Full(_)) => Delivery::Full,
            Err(TrySendError::Closed(_)) => Delivery::NoListener,
        }
    }

    /// Calls with at least one live leg here (for tests and metrics).
    pub fn live_calls(&self) -> usize {
        self.lock().len()
    }
}

/// Unregisters the leg when its bridge ends.
pub struct Registration {
    hub: Arc<Hub>,
    call_id: Uuid,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut calls = self.hub.lock();
        if let Some(entry) = calls.get_mut(&self.call_id) {
            entry.legs.retain(|(_, id, _)| *id != self.id);
            if entry.legs.is_empty() {
                calls.remove(&self.call_id);
            }
        }
    }
}
