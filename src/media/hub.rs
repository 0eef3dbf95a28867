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

use super::mix::FRAME;
use super::playout::Utterance;
use crate::calls::legs::Role;

#[derive(Default)]
pub struct Hub {
    calls: Mutex<HashMap<Uuid, CallEntry>>,
    next_registration: AtomicU64,
}

struct CallEntry {
    next_seq: i32,
    legs: Vec<LegEntry>,
}

struct LegEntry {
    role: Role,
    registration: u64,
    queue: mpsc::Sender<Utterance>,
    /// Where the other party's own voice goes, when this party hears it under the
    /// translation (`original_audio` ducked or full).
    original: Option<mpsc::Sender<[u8; FRAME]>>,
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
        original: Option<mpsc::Sender<[u8; FRAME]>>,
        first_seq: i32,
    ) -> Registration {
        let id = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let mut calls = self.lock();
        let entry = calls.entry(call_id).or_insert(CallEntry {
            next_seq: first_seq,
            legs: Vec::new(),
        });
        entry.next_seq = entry.next_seq.max(first_seq);
        entry.legs.retain(|leg| leg.role != role);
        entry.legs.push(LegEntry {
            role,
            registration: id,
            queue,
            original,
        });
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
        let Some(leg) = entry.legs.iter().find(|leg| leg.role == to) else {
            return Delivery::NoListener;
        };
        utterance.seq = entry.next_seq;
        match leg.queue.try_send(utterance) {
            Ok(()) => {
                entry.next_seq += 1;
                Delivery::Queued
            }
            Err(TrySendError::Full(_)) => Delivery::Full,
            Err(TrySendError::Closed(_)) => Delivery::NoListener,
        }
    }

    /// Where to send this party's own voice so that `to` hears it under the translation,
    /// when `to` is live here and hears it.
    pub fn original_for(&self, call_id: Uuid, to: Role) -> Option<mpsc::Sender<[u8; FRAME]>> {
        self.lock()
            .get(&call_id)?
            .legs
            .iter()
            .find(|leg| leg.role == to)?
            .original
            .clone()
    }

    /// Whether `role`'s stream of the call is live in this process.
    pub fn is_live(&self, call_id: Uuid, role: Role) -> bool {
        self.lock()
            .get(&call_id)
            .is_some_and(|entry| entry.legs.iter().any(|leg| leg.role == role))
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
            entry.legs.retain(|leg| leg.registration != self.id);
            if entry.legs.is_empty() {
                calls.remove(&self.call_id);
            }
        }
    }
}
