//! Final transcript turns, stored durably: each with its `transcript.final` call event and
//! `NOTIFY` in the same statement, and under the identity and index rules of ADR 0017. The
//! media bridge and the browser proxy hand their turns to the replica's [`TurnWriter`],
//! which stores whatever is waiting in one statement (ADR 0054).

use std::collections::{HashSet, VecDeque};

use futures_util::StreamExt as _;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Json;

use crate::db::{Client, Db, DbError};
use crate::events;
use crate::ids::CallId;
use crate::providers::assemblyai;
use crate::retry::{self, Failure, Policy};

#[derive(Debug, Clone)]
pub struct FinalTurn {
    pub call_id: CallId,
    pub track: &'static str,
    /// The display order the caller proposes (continued from the database when the stream
    /// started); `None` takes the next free one. Never reused: a taken index is replaced.
    pub turn_index: Option<i32>,
    /// The turn's identity: the AssemblyAI session and its `turn_order` there.
    pub session_id: String,
    pub turn_order: i64,
    pub text: String,
    pub words: Vec<Word>,
    pub confidence: Option<f64>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    /// The language AssemblyAI detected for the turn, or the party's when fixed.
    pub language: Option<String>,
}

/// A word of a stored turn, as `transcript_turns.words` holds it: times in ms on the
/// track's clock. Typed, not a `serde_json::Value`: a turn waits in the writer's queue
/// with its words, and as a map each word held about 700 bytes of heap, typed about 55.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Word {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub confidence: f64,
}

impl From<assemblyai::Word> for Word {
    fn from(word: assemblyai::Word) -> Self {
        Self {
            text: word.text,
            start_ms: word.start,
            end_ms: word.end,
            confidence: word.confidence,
        }
    }
}

/// What `store_final` did with a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored (and evented) under this index.
    New { turn_index: i32 },
    /// Stored, but the proposed index belonged to another turn (two writers on one track):
    /// stored under the next free index instead. Counted and logged.
    Renumbered { proposed: i32, turn_index: i32 },
    /// This session's turn was already stored: a true duplicate, ignored. Counted.
    Duplicate,
}

/// Stores a final turn and its `transcript.final` event in one statement (so one round trip
/// and one implicit transaction): nothing is ever dropped on a key that new data can collide
/// with. The identity (session, turn order) is the only conflict that is ignored — a true
/// duplicate. A proposed `turn_index` that another turn holds is replaced by the next free
/// one; if two writers of one track take the same free index at once, the primary key
/// refuses the second and its retry (`store_final_retrying`) takes the next.
///
/// One statement, not a transaction of several: under load a transaction held its pooled
/// connection, its advisory lock and the call's row lock across every round trip while the
/// task waited to be polled again, and the pool ran dry (ADR 0026).
pub async fn store_final(db: &Db, turn: &FinalTurn) -> Result<Stored, DbError> {
    let stored = insert(db, &db.client().await?, &[turn]).await?;
    Ok(outcome(turn, index_of(&stored, turn)))
}

/// What became of `turn`, from the index it was stored under (`None`: not stored, as its
/// identity was already there).
fn outcome(turn: &FinalTurn, stored_as: Option<i32>) -> Stored {
    let Some(turn_index) = stored_as else {
        metrics::counter!("transcript_turns_duplicate_total").increment(1);
        tracing::debug!(call_id = %turn.call_id, track = turn.track, session_id = %turn.session_id, turn_order = turn.turn_order, "duplicate final turn ignored");
        return Stored::Duplicate;
    };
    match turn.turn_index {
        Some(proposed) if proposed != turn_index => {
            metrics::counter!("transcript_turns_renumbered_total").increment(1);
            tracing::warn!(call_id = %turn.call_id, track = turn.track, proposed, turn_index, "turn index already taken by another turn; stored under the next free one");
            Stored::Renumbered {
                proposed,
                turn_index,
            }
        }
        _ => Stored::New { turn_index },
    }
}

/// The event data of a turn's `transcript.final` (its `turn_index` is added once known).
fn event_data(turn: &FinalTurn) -> serde_json::Value {
    json!({
        "track": turn.track, "text": turn.text, "language": turn.language,
        "confidence": turn.confidence, "start_ms": turn.start_ms, "end_ms": turn.end_ms,
    })
}

/// Stores `turns` and their `transcript.final` events in one statement: `store_final` for
/// many turns, with one commit, one plan and one round trip for all of them. At most one
/// turn per call and track (their indexes are chosen from the same snapshot); the caller
/// (`TurnWriter`) sees to it. Returns each turn's outcome, in order. One failure fails
/// them all: the writer then stores them one by one.
///
/// On the connection whose statements run their generic plan: planning this statement cost
/// PostgreSQL more than running it for a few turns, and its generic plan is key lookups
/// only (ADR 0062).
pub async fn store_finals(db: &Db, turns: &[&FinalTurn]) -> Result<Vec<Stored>, DbError> {
    let stored = insert(db, &db.generic_plan_client().await?, turns).await?;
    Ok(turns
        .iter()
        .map(|turn| outcome(turn, index_of(&stored, turn)))
        .collect())
}

/// A stored turn: its call, track and the index it was stored under.
type StoredRow = (CallId, String, i32);

/// The index `turn` was stored under, if it was (at most one turn per call and track).
fn index_of(stored: &[StoredRow], turn: &FinalTurn) -> Option<i32> {
    stored
        .iter()
        .find(|(call_id, track, _)| *call_id == turn.call_id && track == turn.track)
        .map(|(_, _, index)| *index)
}

/// The one statement behind `store_final` and `store_finals`: the turns not yet stored, as
/// stored.
async fn insert(db: &Db, client: &Client, turns: &[&FinalTurn]) -> Result<Vec<StoredRow>, DbError> {
    let call_ids: Vec<CallId> = turns.iter().map(|t| t.call_id).collect();
    let tracks: Vec<&str> = turns.iter().map(|t| t.track).collect();
    let proposed: Vec<i32> = turns.iter().map(|t| t.turn_index.unwrap_or(-1)).collect();
    let session_ids: Vec<&str> = turns.iter().map(|t| t.session_id.as_str()).collect();
    let turn_orders: Vec<i64> = turns.iter().map(|t| t.turn_order).collect();
    let texts: Vec<&str> = turns.iter().map(|t| t.text.as_str()).collect();
    let words: Vec<Json<&[Word]>> = turns.iter().map(|t| Json(t.words.as_slice())).collect();
    let confidences: Vec<Option<f64>> = turns.iter().map(|t| t.confidence).collect();
    let starts: Vec<Option<i64>> = turns.iter().map(|t| t.start_ms).collect();
    let ends: Vec<Option<i64>> = turns.iter().map(|t| t.end_ms).collect();
    let languages: Vec<Option<&str>> = turns.iter().map(|t| t.language.as_deref()).collect();
    let data: Vec<serde_json::Value> = turns.iter().map(|t| event_data(t)).collect();
    let rows = db
        .query(
            client,
            // `store_final`'s statement over a set: the same choice of index, the same
            // relinking, and each call's sequence moved on by its number of new turns,
            // numbered in the order the turns were queued.
            "with input as (
                 select * from unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::text[],
                                      $7::jsonb[], $8::float8[], $9::bigint[], $10::bigint[], $11::text[], $12::jsonb[])
                     with ordinality as t(call_id, track, proposed, session_id, turn_order, text, words,
                                          confidence, start_ms, end_ms, language, data, n)
             ), locked as (
                 -- The calls' rows in id order, before anything else touches them: two
                 -- replicas' batches (the legs of an interpreted call stream to either)
                 -- take them in the same order and never deadlock. One key lookup per
                 -- call: a lock in a lateral subquery cannot become a join, and the
                 -- planner would otherwise read every row of a table of a few thousand
                 -- calls (ADR 0055).
                 select c.id
                 from (select distinct id from unnest($1::uuid[]) as u (id) order by id) u,
                      lateral (select c.id from calls c where c.id = u.id for no key update) c
             ), proposed as (
                 select i.*, case
                     -- `offset 0`: a key lookup per turn. Without it the planner may hash
                     -- the whole table once per statement instead (ADR 0055).
                     when i.proposed >= 0 and not exists (select 1 from transcript_turns tt
                                                          where tt.call_id = i.call_id and tt.track = i.track
                                                            and tt.turn_index = i.proposed offset 0)
                     then i.proposed
                     else (select coalesce(max(tt.turn_index) + 1, 0)::int from transcript_turns tt
                           where tt.call_id = i.call_id and tt.track = i.track)
                 end as turn_index
                 from input i cross join (select count(*) from locked) l
             ), inserted as (
                 insert into transcript_turns (call_id, track, turn_index, session_id, turn_order, text, words, confidence, start_ms, end_ms, language)
                 select call_id, track, turn_index, session_id, turn_order, text, words, confidence, start_ms, end_ms, language
                 from proposed
                 on conflict (call_id, track, session_id, turn_order) do nothing
                 returning call_id, track, turn_index, session_id, turn_order
             ), relinked as (
                 -- As in `store_final` (ADR 0017).
                 update utterances u set source_turn_index = i.turn_index
                 from inserted i
                 where u.call_id = i.call_id and u.source_track = i.track and u.source_session_id = i.session_id
                   and u.source_turn_order = i.turn_order and u.source_turn_index <> i.turn_index
                   -- The keys as an array: an index scan whatever the table's size (ADR 0055).
                   and u.call_id = any(array(select call_id from inserted))
             ), counted as (
                 select call_id, count(*) as new_turns from inserted group by call_id
             ), next as (
                 update calls c set event_seq = c.event_seq + k.new_turns
                 from counted k where c.id = k.call_id and c.id = any(array(select call_id from counted))
                 returning c.id, c.event_seq - k.new_turns as before
             ), numbered as (
                 select i.call_id, i.track, i.turn_index, p.data,
                        nx.before + row_number() over (partition by i.call_id order by p.n) as seq
                 from inserted i
                 join input p on p.call_id = i.call_id and p.track = i.track
                 join next nx on nx.id = i.call_id
             ), appended as (
                 insert into call_events (call_id, seq, kind, data, occurred_at)
                 select call_id, seq, 'transcript.final', data || jsonb_build_object('turn_index', turn_index), $13
                 from numbered
                 returning call_id, seq
             )
             select nb.call_id, nb.track, nb.turn_index, pg_notify($14, a.call_id::text || ':' || a.seq)
             from numbered nb join appended a on a.call_id = nb.call_id and a.seq = nb.seq",
            &[&call_ids, &tracks, &proposed, &session_ids, &turn_orders, &texts, &words,
              &confidences, &starts, &ends, &languages, &data, &chrono::Utc::now(), &events::NOTIFY_CHANNEL],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get("call_id"), row.get("track"), row.get("turn_index")))
        .collect())
}

/// The most turns one statement stores.
const MAX_BATCH: usize = 256;

/// Turns waiting for the writer; a full queue makes `store` wait (never drops).
const QUEUE: usize = 4096;

/// Pooled connections a refused batch's turns use at once, stored one by one: a checkout
/// per turn of a 256-turn batch would queue the media upgrades behind them (ADR 0026).
const FALLBACK_AT_ONCE: usize = 4;

struct Job {
    turn: FinalTurn,
    done: oneshot::Sender<Option<Stored>>,
}

/// The replica's final-turn writer. One task stores whatever turns are waiting in one
/// statement (`store_finals`), then takes the next lot: a turn is written at once when the
/// writer is idle, and under load the turns that arrive during a write share the next
/// one. A statement per turn was one commit (a WAL flush), one executor start and one
/// notification wake-up per turn; at 1,000 live calls that was most of PostgreSQL's work
/// (ADR 0054). Cheap to clone; the task ends when the last clone is gone, after the turns
/// queued before.
#[derive(Clone)]
pub struct TurnWriter {
    db: Db,
    queue: mpsc::Sender<Job>,
}

impl TurnWriter {
    pub fn start(db: Db) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_all(db.clone(), jobs));
        Self { db, queue }
    }

    /// Stores `turn` (retrying transient database errors, as `store_final_retrying`) and
    /// says how; `None` when it could not be stored (counted and logged).
    pub async fn store(&self, turn: FinalTurn) -> Option<Stored> {
        // A place in the queue first, then the turn moved into it: a live call has a few of
        // these futures waiting while PostgreSQL answers, and `send(job)` would hold a
        // second copy of the turn in its own future.
        let Ok(place) = self.queue.reserve().await else {
            // The writer is gone (it never stops while a clone is alive): store directly.
            // Boxed: its statement futures would otherwise be part of every waiting turn's
            // future, though this path is almost never taken.
            return Box::pin(store_final_retrying(&self.db, &turn)).await;
        };
        let (done, outcome) = oneshot::channel();
        place.send(Job { turn, done });
        match outcome.await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The writer dropped the turn unanswered: it panicked mid-batch.
                metrics::counter!("transcript_turns_lost_total").increment(1);
                tracing::error!("the final-turn writer stopped; a turn was not stored");
                None
            }
        }
    }
}

async fn write_all(db: Db, mut jobs: mpsc::Receiver<Job>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while waiting.len() < QUEUE
            && let Ok(job) = jobs.try_recv()
        {
            waiting.push_back(job);
        }
        let batch = next_batch(&mut waiting);
        metrics::histogram!("transcript_turns_batch_size").record(batch.len() as f64);
        write_batch(&db, batch).await;
    }
}

/// Up to `MAX_BATCH` of the waiting turns, oldest first, at most one per call and track:
/// a track's later turn waits for the next statement, so each track's turns are stored in
/// the order they reached the writer.
fn next_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let mut taken = HashSet::new();
    let mut batch = Vec::new();
    let mut left = VecDeque::with_capacity(waiting.len());
    for job in waiting.drain(..) {
        if batch.len() < MAX_BATCH && taken.insert((job.turn.call_id, job.turn.track)) {
            batch.push(job);
        } else {
            taken.insert((job.turn.call_id, job.turn.track));
            left.push_back(job);
        }
    }
    *waiting = left;
    batch
}

async fn write_batch(db: &Db, batch: Vec<Job>) {
    let turns: Vec<&FinalTurn> = batch.iter().map(|job| &job.turn).collect();
    match store_finals(db, &turns).await {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.done.send(Some(outcome));
            }
        }
        Err(error) => {
            // One at a time, each with its own retries, a few at once: a turn the
            // database refuses for good (its call deleted, say) fails at once and costs only
            // itself, and a passing outage is ridden out as before batching.
            tracing::warn!(%error, turns = batch.len(), "storing a batch of final turns failed; storing them one by one");
            futures_util::stream::iter(batch)
                .for_each_concurrent(FALLBACK_AT_ONCE, |job| async move {
                    let outcome = store_final_retrying(db, &job.turn).await;
                    let _ = job.done.send(outcome);
                })
                .await;
        }
    }
}

/// An integrity error no retry can mend (the call is gone, a check fails). A unique
/// violation is not one: two writers that took the same free index at once get it, and
/// the retry takes the next.
fn refused_for_good(error: &DbError) -> bool {
    let DbError::Postgres(error) = error else {
        return false;
    };
    error.code().is_some_and(|code| {
        let code = code.code();
        code.starts_with("23") && code != "23505"
    })
}

/// Stores a final turn, retrying transient database errors. A turn that still cannot be
/// stored is counted (`transcript_turns_lost_total`) and logged as an error, never dropped
/// quietly.
pub async fn store_final_retrying(db: &Db, turn: &FinalTurn) -> Option<Stored> {
    // About 3 s of database trouble is ridden out (200 ms doubling, five attempts).
    let policy = Policy::provider(5);
    match retry::run(&policy, "storing a final turn", |_| async {
        store_final(db, turn).await.map_err(|error| {
            if refused_for_good(&error) {
                Failure::Final(error)
            } else {
                Failure::Transient(error)
            }
        })
    })
    .await
    {
        Ok(stored) => Some(stored),
        Err(error) => {
            metrics::counter!("transcript_turns_lost_total").increment(1);
            tracing::error!(%error, call_id = %turn.call_id, track = turn.track, session_id = %turn.session_id, turn_order = turn.turn_order, text = %turn.text, "a final turn could not be stored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(call: u128, track: &'static str, order: i64) -> Job {
        Job {
            turn: FinalTurn {
                call_id: uuid::Uuid::from_u128(call).into(),
                track,
                turn_index: None,
                session_id: "s".into(),
                turn_order: order,
                text: String::new(),
                words: Vec::new(),
                confidence: None,
                start_ms: None,
                end_ms: None,
                language: None,
            },
            done: oneshot::channel().0,
        }
    }

    #[tokio::test]
    async fn a_turn_waiting_for_the_writer_holds_little_more_than_the_turn() {
        let url = crate::config::Secret::new("postgres://nobody@127.0.0.1:1/none".to_owned());
        let db = Db::connect(&crate::config::DatabaseConfig {
            url: url.clone(),
            direct_url: url,
            pool_max_size: 1,
            pool_timeout: std::time::Duration::from_secs(1),
            statement_cache: true,
            random_page_cost: None,
            migrate_on_start: false,
        })
        .expect("a lazy pool");
        let writer = TurnWriter::start(db);
        // A live call has a few of these in flight while PostgreSQL answers (one per final
        // turn): the fallback's statement futures are boxed out of it.
        let store = writer.store(job(1, "inbound", 0).turn);
        let (size, turn) = (
            std::mem::size_of_val(&store),
            std::mem::size_of::<FinalTurn>(),
        );
        println!("store future {size} bytes, FinalTurn {turn}");
        // 3,248 bytes in a debug build before the place was reserved first and the direct
        // store boxed; 560 after.
        assert!(size < 1024, "{size} bytes for a {turn}-byte turn");
    }

    fn keys(jobs: &[Job]) -> Vec<(u128, &'static str, i64)> {
        jobs.iter()
            .map(|j| {
                (
                    j.turn.call_id.uuid().as_u128(),
                    j.turn.track,
                    j.turn.turn_order,
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_one_turn_per_call_and_track_and_the_rest_keep_their_order() {
        let mut waiting: VecDeque<Job> = [
            job(1, "inbound", 0),
            job(1, "outbound", 0),
            job(1, "inbound", 1),
            job(2, "inbound", 0),
            job(1, "inbound", 2),
            job(1, "outbound", 1),
        ]
        .into_iter()
        .collect();
        let first = next_batch(&mut waiting);
        assert_eq!(
            keys(&first),
            [(1, "inbound", 0), (1, "outbound", 0), (2, "inbound", 0)]
        );
        let second = next_batch(&mut waiting);
        assert_eq!(keys(&second), [(1, "inbound", 1), (1, "outbound", 1)]);
        let third = next_batch(&mut waiting);
        assert_eq!(keys(&third), [(1, "inbound", 2)]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_full_batch_leaves_the_rest_in_order() {
        let mut waiting: VecDeque<Job> = (0..MAX_BATCH as u128 + 3)
            .map(|call| job(call, "inbound", 0))
            .collect();
        assert_eq!(next_batch(&mut waiting).len(), MAX_BATCH);
        assert_eq!(
            keys(waiting.make_contiguous()),
            (MAX_BATCH as u128..MAX_BATCH as u128 + 3)
                .map(|call| (call, "inbound", 0))
                .collect::<Vec<_>>()
        );
    }
}
