//! The interpreted calls whose legs stream to this process: each leg's bridge registers the
//! queue of what is to be spoken *to* its party, and the other leg's bridge hands its
//! party's final turns to that queue — never to its own, so nobody hears their own words.
//!
//! The two legs' streams may reach different replicas (docs/adr/0035-cross-replica-legs.md):
//! a turn whose listener is not registered here is handed over through PostgreSQL — the
//! speaker's bridge sends `NOTIFY interpreted_turns` once the turn is stored, and the
//! replica whose hub holds the listener loads it and queues it like an in-process turn. A
//! registration first reads the turns it missed (newer than what its party was already
//! given, from the database) while deliveries wait, so nothing in between is lost; each
//! registration queues a turn of the other party at most once, whichever path brings it.
//!
//! Utterance numbers are per call and shared by both listeners' rows, so each listener
//! takes its own parity (the agent hears even numbers, the remote party odd ones): two hubs
//! numbering one call's two listeners on two replicas never collide.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::frames::Track;
use super::playout::{Outbound, TurnId, Utterance};
use crate::calls::legs::Role;
use crate::db::{Db, DbError, Notice};
use crate::ids::CallId;
use crate::state::AppState;

/// The channel a speaker's bridge announces a stored turn on when its listener is not here.
pub const NOTIFY_CHANNEL: &str = "interpreted_turns";

/// How many of the other party's turns a registration remembers having queued (to ignore a
/// second path bringing one again); far more than can be in flight.
const REMEMBERED_TURNS: usize = 256;

/// At most this many missed turns are read when a listener registers.
const CATCH_UP_LIMIT: i64 = 64;

#[derive(Default)]
pub struct Hub {
    calls: Mutex<HashMap<CallId, CallEntry>>,
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
    original: Option<mpsc::Sender<Outbound>>,
    /// The other party's turns already queued to this registration, newest last.
    delivered: VecDeque<Seen>,
    /// While the registration reads the turns it missed, deliveries wait here.
    catching_up: Option<Vec<Utterance>>,
}

/// What makes two deliveries the same turn: its identity (ADR 0017). Never the index
/// alone when the identity is known: the speaker's bridge hands a turn over under the index
/// it proposed, which the store may replace (renumbered, two writers of one track), so one
/// turn can come under two indices and two turns under one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Turn(TurnId),
    /// A turn stored before identities (a legacy row): its index is all there is.
    Index(i32),
}

impl Seen {
    fn of(utterance: &Utterance) -> Self {
        match &utterance.turn {
            Some(turn) => Seen::Turn(turn.clone()),
            None => Seen::Index(utterance.turn_index),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The other party's stream is not (or no longer) live in this process.
    NoListener,
    /// The listener's queue is full (they are far behind): dropped.
    Full,
    /// This registration already queued the turn (it came by another path too).
    Duplicate,
}

/// What a speaker's bridge announces (`NOTIFY interpreted_turns`) when the listener's
/// stream is not in its process: only the turn's identity and when it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOver {
    pub call_id: CallId,
    /// The party who said it (their `transcript_turns.track`).
    pub speaker: String,
    pub turn_index: i32,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub end_of_turn_at: DateTime<Utc>,
}

/// The utterance number `role` hears next, at or after `next` (see the module comment).
fn seq_for(next: i32, role: Role) -> i32 {
    let parity = match role {
        Role::Agent => 0,
        Role::Remote => 1,
    };
    if next.rem_euclid(2) == parity {
        next
    } else {
        next + 1
    }
}

impl Hub {
    /// The hub of this process, taking hand-overs from other replicas until shutdown.
    pub fn start(state: &AppState) -> Arc<Self> {
        let hub = Arc::new(Self::default());
        tokio::spawn(take_hand_overs(state.clone(), Arc::downgrade(&hub)));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, CallEntry>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `role`'s bridge is live: utterances for that party go to `queue` until the
    /// registration is dropped. `first_seq` is the next utterance number not yet stored for
    /// the call (a re-attached leg continues the numbering). Deliveries wait until
    /// [`Registration::catch_up`] has read what the party missed.
    pub fn register(
        self: &Arc<Self>,
        call_id: CallId,
        role: Role,
        queue: mpsc::Sender<Utterance>,
        original: Option<mpsc::Sender<Outbound>>,
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
            delivered: VecDeque::new(),
            catching_up: Some(Vec::new()),
        });
        Registration {
            hub: self.clone(),
            call_id,
            role,
            id,
        }
    }

    /// Numbers `utterance` and queues it to be spoken to `to`.
    pub fn deliver(&self, call_id: CallId, to: Role, utterance: Utterance) -> Delivery {
        let mut calls = self.lock();
        let Some(entry) = calls.get_mut(&call_id) else {
            return Delivery::NoListener;
        };
        let Some(leg) = entry.legs.iter_mut().find(|leg| leg.role == to) else {
            return Delivery::NoListener;
        };
        let seen = Seen::of(&utterance);
        if leg.delivered.contains(&seen) {
            return Delivery::Duplicate;
        }
        if let Some(waiting) = leg.catching_up.as_mut() {
            if waiting.iter().any(|u| Seen::of(u) == seen) {
                return Delivery::Duplicate;
            }
            waiting.push(utterance);
            return Delivery::Queued;
        }
        queue_one(&mut entry.next_seq, leg, utterance)
    }

    /// Reads the turns of the other party that `registration` has not been given — newer
    /// than the last one its party was handed (stored utterances), said after its leg
    /// answered — and queues them in order with whatever arrived meanwhile. Also run again
    /// when the LISTEN connection was lost (notifications may have been missed).
    async fn catch_up(&self, db: &Db, call_id: CallId, role: Role, id: u64) {
        let missed = match missed_turns(db, call_id, role).await {
            Ok(missed) => missed,
            Err(error) => {
                tracing::warn!(%error, %call_id, "reading the turns a leg missed failed");
                Vec::new()
            }
        };
        self.caught_up(call_id, id, missed);
    }

    /// Queues `missed` with what arrived while they were read, in turn order, each once;
    /// deliveries go straight to the queue again.
    fn caught_up(&self, call_id: CallId, id: u64, missed: Vec<Utterance>) {
        let mut calls = self.lock();
        let Some(entry) = calls.get_mut(&call_id) else {
            return;
        };
        let Some(leg) = entry.legs.iter_mut().find(|leg| leg.registration == id) else {
            return;
        };
        let mut all = leg.catching_up.take().unwrap_or_default();
        all.extend(missed);
        // One speaker's turns, in the order they said them; each once (by identity: the
        // same turn can come under the index proposed and the one it was stored under).
        all.sort_by_key(|u| u.turn_index);
        let mut caught_up = 0;
        for utterance in all {
            if leg.delivered.contains(&Seen::of(&utterance)) {
                continue;
            }
            match queue_one(&mut entry.next_seq, leg, utterance) {
                Delivery::Queued => caught_up += 1,
                Delivery::Full => {
                    tracing::warn!(%call_id, "translation queue full; utterance dropped");
                }
                Delivery::NoListener | Delivery::Duplicate => {}
            }
        }
        if caught_up > 0 {
            tracing::debug!(%call_id, caught_up, "queued the turns a leg had not heard");
        }
    }

    /// Where to send this party's own voice so that `to` hears it under the translation,
    /// when `to` is live here and hears it.
    pub fn original_for(&self, call_id: CallId, to: Role) -> Option<mpsc::Sender<Outbound>> {
        self.lock()
            .get(&call_id)?
            .legs
            .iter()
            .find(|leg| leg.role == to)?
            .original
            .clone()
    }

    /// Whether `role`'s stream of the call is live in this process.
    pub fn is_live(&self, call_id: CallId, role: Role) -> bool {
        self.lock()
            .get(&call_id)
            .is_some_and(|entry| entry.legs.iter().any(|leg| leg.role == role))
    }

    /// Calls with at least one live leg here (for tests and metrics).
    pub fn live_calls(&self) -> usize {
        self.lock().len()
    }
}

fn queue_one(next_seq: &mut i32, leg: &mut LegEntry, mut utterance: Utterance) -> Delivery {
    let seen = Seen::of(&utterance);
    utterance.seq = seq_for(*next_seq, leg.role);
    let seq = utterance.seq;
    match leg.queue.try_send(utterance) {
        Ok(()) => {
            *next_seq = seq + 1;
            if leg.delivered.len() >= REMEMBERED_TURNS {
                leg.delivered.pop_front();
            }
            leg.delivered.push_back(seen);
            Delivery::Queued
        }
        Err(TrySendError::Full(_)) => Delivery::Full,
        Err(TrySendError::Closed(_)) => Delivery::NoListener,
    }
}

/// An `Instant` as long ago as `at` is before now (for latency measured from another
/// replica's end of turn).
fn instant_of(at: DateTime<Utc>) -> Instant {
    let ago = (Utc::now() - at).to_std().unwrap_or_default();
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

fn utterance_of(
    speaker: Role,
    turn_index: i32,
    turn: Option<TurnId>,
    text: String,
    language: Option<String>,
    end_of_turn_at: DateTime<Utc>,
) -> Utterance {
    Utterance {
        // Numbered when queued.
        seq: 0,
        source_track: Track::Inbound,
        source: speaker.as_str(),
        source_language: language,
        turn_index,
        turn,
        text,
        end_of_turn_at,
        end_of_turn: instant_of(end_of_turn_at),
    }
}

/// The other party's stored turns `listener` was not given yet (see [`Registration::catch_up`]).
async fn missed_turns(db: &Db, call_id: CallId, listener: Role) -> Result<Vec<Utterance>, DbError> {
    let speaker = listener.other();
    let client = db.client().await?;
    let rows = client
        .query(
            "select t.turn_index, t.text, t.language, t.created_at, t.session_id, t.turn_order
             from transcript_turns t
             where t.call_id = $1 and t.track = $2 and btrim(t.text) <> ''
               and t.turn_index > coalesce((select max(source_turn_index) from utterances
                                            where call_id = $1 and source_track = $2), -1)
               -- Given already under the index its speaker proposed (renumbered, ADR 0017).
               and not exists (select 1 from utterances u
                               where u.call_id = $1 and u.source_track = $2
                                 and u.source_session_id = t.session_id
                                 and u.source_turn_order = t.turn_order)
               and t.created_at >= coalesce((select answered_at from call_legs
                                             where call_id = $1 and role = $3), '-infinity')
             order by t.turn_index
             limit $4",
            &[
                &call_id,
                &speaker.as_str(),
                &listener.as_str(),
                &CATCH_UP_LIMIT,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            utterance_of(
                speaker,
                row.get("turn_index"),
                turn_id(row.get("session_id"), row.get("turn_order")),
                row.get("text"),
                row.get("language"),
                row.get("created_at"),
            )
        })
        .collect())
}

/// One announced turn, as its listener's queue wants it.
async fn load_turn(db: &Db, hand_over: &HandOver) -> Result<Option<Utterance>, DbError> {
    let Some(speaker) = Role::parse(&hand_over.speaker) else {
        return Ok(None);
    };
    let client = db.client().await?;
    let row = client
        .query_opt(
            "select text, language, session_id, turn_order from transcript_turns
             where call_id = $1 and track = $2 and turn_index = $3",
            &[
                &hand_over.call_id,
                &hand_over.speaker,
                &hand_over.turn_index,
            ],
        )
        .await?;
    Ok(row.map(|row| {
        utterance_of(
            speaker,
            hand_over.turn_index,
            turn_id(row.get("session_id"), row.get("turn_order")),
            row.get("text"),
            row.get("language"),
            hand_over.end_of_turn_at,
        )
    }))
}

/// A stored turn's identity; a row from before identities has no turn order.
fn turn_id(session_id: String, turn_order: Option<i64>) -> Option<TurnId> {
    turn_order.map(|turn_order| TurnId {
        session_id,
        turn_order,
    })
}

/// Announces a stored turn for a listener on another replica.
pub async fn announce(db: &Db, hand_over: &HandOver) -> Result<(), DbError> {
    let payload = serde_json::to_string(hand_over).unwrap_or_default();
    let client = db.client().await?;
    client
        .execute("select pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &payload])
        .await?;
    Ok(())
}

/// Queues the turns other replicas announce for listeners registered here, one at a time
/// (in the order they were announced). After the LISTEN connection was lost, every live
/// registration reads what it may have missed.
async fn take_hand_overs(state: AppState, hub: std::sync::Weak<Hub>) {
    let mut notices = state.listener.subscribe();
    let shutdown = state.shutdown.clone();
    loop {
        let notice = tokio::select! {
            () = shutdown.cancelled() => return,
            notice = notices.recv() => notice,
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match notice {
            Ok(Notice::Notification { channel, payload }) if channel == NOTIFY_CHANNEL => {
                let Ok(hand_over) = serde_json::from_str::<HandOver>(&payload) else {
                    tracing::warn!(%payload, "unreadable interpreted turn hand-over");
                    continue;
                };
                let Some(listener) = Role::parse(&hand_over.speaker).map(Role::other) else {
                    continue;
                };
                // Most replicas hold neither leg: nothing to read.
                if !hub.is_live(hand_over.call_id, listener) {
                    continue;
                }
                match load_turn(&state.db, &hand_over).await {
                    Ok(Some(utterance)) => {
                        match hub.deliver(hand_over.call_id, listener, utterance) {
                            Delivery::Queued => {
                                metrics::counter!("translation_handovers_received_total")
                                    .increment(1);
                            }
                            Delivery::Full => {
                                tracing::warn!(call_id = %hand_over.call_id, "translation queue full; utterance dropped");
                            }
                            Delivery::NoListener | Delivery::Duplicate => {}
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        // The registration's next catch-up (LISTEN reconnect) or the
                        // speaker's next turn does not bring it back: say so.
                        tracing::warn!(%error, call_id = %hand_over.call_id, turn_index = hand_over.turn_index, "loading a handed-over turn failed");
                    }
                }
            }
            Ok(Notice::Notification { .. }) => {}
            Ok(Notice::Reconnected) | Err(RecvError::Lagged(_)) => {
                for registration in hub.registrations() {
                    let (hub, db) = (hub.clone(), state.db.clone());
                    tokio::spawn(async move { hub.catch_up_again(&db, registration).await });
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl Hub {
    /// Every live registration here, to read again what it may have missed.
    fn registrations(&self) -> Vec<(CallId, Role, u64)> {
        self.lock()
            .iter()
            .flat_map(|(call_id, entry)| {
                entry
                    .legs
                    .iter()
                    .map(|leg| (*call_id, leg.role, leg.registration))
            })
            .collect()
    }

    async fn catch_up_again(&self, db: &Db, (call_id, role, id): (CallId, Role, u64)) {
        {
            let mut calls = self.lock();
            let Some(leg) = calls
                .get_mut(&call_id)
                .and_then(|entry| entry.legs.iter_mut().find(|leg| leg.registration == id))
            else {
                return;
            };
            // Another catch-up is already running for it.
            if leg.catching_up.is_some() {
                return;
            }
            leg.catching_up = Some(Vec::new());
        }
        self.catch_up(db, call_id, role, id).await;
    }
}

/// Unregisters the leg when its bridge ends.
pub struct Registration {
    hub: Arc<Hub>,
    call_id: CallId,
    role: Role,
    id: u64,
}

impl Registration {
    /// Reads what the party missed before this registration, then lets deliveries through
    /// (see [`Hub`]'s `catch_up`): until then they wait, in order.
    pub async fn catch_up(&self, db: &Db) {
        self.hub
            .catch_up(db, self.call_id, self.role, self.id)
            .await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(index: i32) -> Utterance {
        said(index, "s1", index as i64)
    }

    /// Turn `order` of `session`, handed over under `index`.
    fn said(index: i32, session: &str, order: i64) -> Utterance {
        utterance_of(
            Role::Agent,
            index,
            turn_id(session.to_owned(), Some(order)),
            format!("{session} turn {order}"),
            None,
            Utc::now(),
        )
    }

    fn received(rx: &mut mpsc::Receiver<Utterance>) -> Vec<(i32, i32)> {
        let mut got = Vec::new();
        while let Ok(u) = rx.try_recv() {
            got.push((u.turn_index, u.seq));
        }
        got
    }

    #[test]
    fn deliveries_wait_for_the_catch_up_then_everything_is_queued_in_turn_order_once() {
        let hub = Arc::new(Hub::default());
        let call = CallId::new();
        let (tx, mut rx) = mpsc::channel(8);
        let registration = hub.register(call, Role::Remote, tx, None, 4);
        // Turn 2 arrives (NOTIFY or in process) while the missed turns are being read.
        assert_eq!(hub.deliver(call, Role::Remote, turn(2)), Delivery::Queued);
        assert_eq!(
            hub.deliver(call, Role::Remote, turn(2)),
            Delivery::Duplicate
        );
        assert!(received(&mut rx).is_empty(), "nothing before the catch-up");
        // The read found turns 1 and 2 (2 was stored before it was announced).
        hub.caught_up(call, registration.id, vec![turn(1), turn(2)]);
        // The remote party hears odd numbers, from the call's next one.
        assert_eq!(received(&mut rx), [(1, 5), (2, 7)]);
        assert_eq!(
            hub.deliver(call, Role::Remote, turn(1)),
            Delivery::Duplicate
        );
        assert_eq!(hub.deliver(call, Role::Remote, turn(3)), Delivery::Queued);
        assert_eq!(received(&mut rx), [(3, 9)]);
        assert_eq!(
            hub.deliver(call, Role::Agent, turn(0)),
            Delivery::NoListener
        );
    }

    /// ADR 0017 with two writers of one track (a restarted stream whose old bridge still
    /// runs): both propose index 5 for different turns, and the store renumbers one. The
    /// listener hears both, each once, whatever index each comes under.
    #[test]
    fn a_renumbered_turn_is_one_turn_and_two_turns_under_one_index_are_two() {
        let hub = Arc::new(Hub::default());
        let call = CallId::new();
        let (tx, mut rx) = mpsc::channel(8);
        let registration = hub.register(call, Role::Remote, tx, None, 0);
        hub.caught_up(call, registration.id, Vec::new());
        // The old bridge's turn and the new bridge's turn, both proposing 5, in process.
        assert_eq!(
            hub.deliver(call, Role::Remote, said(5, "old", 3)),
            Delivery::Queued
        );
        assert_eq!(
            hub.deliver(call, Role::Remote, said(5, "new", 0)),
            Delivery::Queued
        );
        // The new bridge's turn was stored as 6; a catch-up (LISTEN reconnect) or an
        // announcement brings it under its stored index: the same turn.
        assert_eq!(
            hub.deliver(call, Role::Remote, said(6, "new", 0)),
            Delivery::Duplicate
        );
        let got: Vec<i32> = received(&mut rx).iter().map(|t| t.0).collect();
        assert_eq!(got, [5, 5], "both turns, once each");
        // The same in a catch-up: what waited and what was read are one turn under two
        // indices, and another turn under the first one's index.
        let registration = {
            drop(registration);
            let (tx, rx2) = mpsc::channel(8);
            rx = rx2;
            hub.register(call, Role::Remote, tx, None, 0)
        };
        assert_eq!(
            hub.deliver(call, Role::Remote, said(7, "new", 1)),
            Delivery::Queued
        );
        hub.caught_up(
            call,
            registration.id,
            vec![said(7, "old", 4), said(8, "new", 1)],
        );
        let got: Vec<(i32, i32)> = received(&mut rx);
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn each_listener_takes_its_own_parity_so_two_hubs_never_collide() {
        let (a, b) = (Arc::new(Hub::default()), Arc::new(Hub::default()));
        let call = CallId::new();
        let (agent_tx, mut agent_rx) = mpsc::channel(8);
        let (remote_tx, mut remote_rx) = mpsc::channel(8);
        // Two replicas read the same next number when their legs registered.
        let on_a = a.register(call, Role::Agent, agent_tx, None, 3);
        let on_b = b.register(call, Role::Remote, remote_tx, None, 3);
        a.caught_up(call, on_a.id, Vec::new());
        b.caught_up(call, on_b.id, Vec::new());
        for index in 0..3 {
            assert_eq!(a.deliver(call, Role::Agent, turn(index)), Delivery::Queued);
            assert_eq!(b.deliver(call, Role::Remote, turn(index)), Delivery::Queued);
        }
        let agent: Vec<i32> = received(&mut agent_rx).iter().map(|t| t.1).collect();
        let remote: Vec<i32> = received(&mut remote_rx).iter().map(|t| t.1).collect();
        assert_eq!(agent, [4, 6, 8]);
        assert_eq!(remote, [3, 5, 7]);
        drop(on_a);
        assert_eq!(
            a.live_calls(),
            0,
            "the call leaves the hub with its last leg"
        );
    }
}
