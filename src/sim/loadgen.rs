//! Media load generator for benchmarks: simulated Telnyx media streams sending frames on a
//! fixed 20 ms grid (open loop), the floor relay they are compared with, and the ledger that
//! accounts for every frame — lost, doubled, and latency counted from when it was due.
//!
//! Why open loop: a sender that waits until it is able to send hides its own queueing
//! (coordinated omission). Here every frame has a due time fixed before the run starts; a
//! frame sent late carries its lateness into the latency, and the sender's own lag is
//! reported apart, so a saturated generator is visible instead of flattering the service.
//!
//! Phases are isolated: every `Ledger` has a tag of its own, written into each frame beside
//! its id, so a block that arrives from an earlier phase is counted as stale (and fails the
//! phase) instead of passing for a frame of this one; and a phase is counted only once it has
//! drained (every upstream session closed, nothing more arriving), so a slow path shows up as
//! latency, not as loss. docs/BENCHMARKS.md describes how the benchmarks use it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

/// One 20 ms frame of 8 kHz PCMU.
pub const FRAME_BYTES: usize = 160;
pub const FRAME_PERIOD: Duration = Duration::from_millis(20);
/// Both tracks of a call (`inbound`, `outbound`).
const TRACKS: usize = 2;
/// Frames in one batch, the bridge's by default and the floor's (100 ms, 800 bytes of µ-law).
const BATCH_FRAMES: usize =
    crate::config::DEFAULT_MEDIA_BATCH_MS / FRAME_PERIOD.as_millis() as usize;
/// The high half of every phase tag (bytes 8..16 of a frame): a block carrying it with
/// another phase's low half is a late frame of that phase, not corruption.
const TAG_MAGIC: u64 = 0xCB1D_6E00_0000_0000;
const TAG_MAGIC_MASK: u64 = 0xFFFF_FF00_0000_0000;

/// A deliberate fault in the generator, so a test can show that the invariants catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// The frame with this id is planned (and counted as due) but never sent.
    DropFrame(u64),
    /// The frame with this id is sent twice.
    DuplicateFrame(u64),
}

/// What to play: `calls` streams, `frames` frames per track each.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub calls: usize,
    pub frames: usize,
    pub fault: Fault,
}

impl Plan {
    pub fn frames_planned(&self) -> usize {
        self.calls * self.frames * TRACKS
    }

    /// Frame ids are dense from 1; 0 is never used, so zeroed bytes never count.
    pub fn frame_id(&self, call: usize, chunk: usize, track: usize) -> u64 {
        ((call * self.frames + chunk) * TRACKS + track) as u64 + 1
    }

    /// When a call's frame is due, after the grid's start: every 20 ms, each call offset by
    /// its share of one frame period and by 0–4 whole frames (its `lead`), as real calls
    /// are not in phase with each other. Not within a frame period, and not within a batch
    /// either: a stream's batches end at every fifth frame, so calls whose frames were only
    /// spread over 20 ms all ended their batches in the same 20 ms of every 100 ms, and the
    /// latency, measured at the frame that completes a batch, was sampled only there. The
    /// generator sends on this grid and the ledger measures from it: one grid for both.
    fn due_after_start(&self, call: usize, chunk: usize) -> Duration {
        FRAME_PERIOD * call as u32 / self.calls.max(1) as u32
            + FRAME_PERIOD * (chunk + self.lead(call)) as u32
    }

    /// Whole frames by which `call` starts after the first: calls take turns over one batch.
    fn lead(&self, call: usize) -> usize {
        call % BATCH_FRAMES
    }

    /// 20 ms slots the grid spans: every call's frames, the leads included.
    pub fn slots(&self) -> usize {
        self.frames + BATCH_FRAMES - 1
    }

    /// Every `(call, chunk)` once, in due order: slot by slot, and in each slot the calls
    /// in call order (a call's share of the frame period grows with its number).
    fn send_order(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.slots()).flat_map(move |slot| {
            (0..self.calls).filter_map(move |call| {
                let chunk = slot.checked_sub(self.lead(call))?;
                (chunk < self.frames).then_some((call, chunk))
            })
        })
    }

    fn decode(&self, id: u64) -> Option<(usize, usize)> {
        let index = id.checked_sub(1)? as usize;
        if index >= self.frames_planned() {
            return None;
        }
        let frame = index / TRACKS;
        Some((frame / self.frames, frame % self.frames))
    }
}

/// Every frame's arrivals and the latencies measured, shared by the generator and the
/// AssemblyAI simulator's probe (which sees each forwarded chunk).
pub struct Ledger {
    plan: Plan,
    origin: Instant,
    /// When the grid starts (ns after `origin`); `u64::MAX` until the streams are connected.
    grid_start_ns: AtomicU64,
    /// Arrivals per frame id (saturating at 255).
    seen: Vec<AtomicU8>,
    /// µs from the due time of the frame completing each chunk to the chunk's arrival.
    latency_us: Mutex<Vec<u32>>,
    /// Blocks in arriving chunks that were not frames of this plan.
    foreign: AtomicUsize,
    /// This phase's tag, in bytes 8..16 of each of its frames.
    tag: u64,
    /// Blocks carrying another phase's tag: late frames of an earlier phase.
    stale: AtomicUsize,
    /// Blocks seen so far (any kind), to tell when nothing more arrives.
    arrivals: AtomicUsize,
}

/// A tag per ledger in this process: phases never share one.
fn next_tag() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    TAG_MAGIC | (NEXT.fetch_add(1, Ordering::Relaxed) & !TAG_MAGIC_MASK)
}

impl Ledger {
    pub fn new(plan: Plan) -> Self {
        Self {
            plan,
            origin: Instant::now(),
            grid_start_ns: AtomicU64::new(u64::MAX),
            seen: (0..=plan.frames_planned())
                .map(|_| AtomicU8::new(0))
                .collect(),
            latency_us: Mutex::new(Vec::with_capacity(plan.frames_planned() / 5 + 16)),
            foreign: AtomicUsize::new(0),
            tag: next_tag(),
            stale: AtomicUsize::new(0),
            arrivals: AtomicUsize::new(0),
        }
    }

    /// This phase's tag (written into every frame it plays).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Whether the grid has started (every stream connected, frames falling due).
    pub fn started(&self) -> bool {
        self.grid_start_ns.load(Ordering::Relaxed) != u64::MAX
    }

    /// Blocks that arrived so far, of this phase or not.
    pub fn arrivals(&self) -> usize {
        self.arrivals.load(Ordering::Relaxed)
    }

    /// ns after `origin` at which frame `chunk` of `call` is due (`Plan::due_after_start`).
    fn due_ns(&self, start_ns: u64, call: usize, chunk: usize) -> u64 {
        start_ns + self.plan.due_after_start(call, chunk).as_nanos() as u64
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The AssemblyAI simulator's probe: one chunk of audio as the service forwarded it.
    pub fn on_chunk(&self, chunk: &[u8]) {
        let now = self.now_ns();
        let start = self.grid_start_ns.load(Ordering::Relaxed);
        let blocks = chunk.len() / FRAME_BYTES;
        self.arrivals.fetch_add(blocks.max(1), Ordering::Relaxed);
        if !chunk.len().is_multiple_of(FRAME_BYTES) {
            self.foreign.fetch_add(1, Ordering::Relaxed);
        }
        for (index, block) in chunk.chunks_exact(FRAME_BYTES).enumerate() {
            let id = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
            let tag = u64::from_le_bytes(block[8..16].try_into().expect("8 bytes"));
            if tag != self.tag {
                let counter = if tag & TAG_MAGIC_MASK == TAG_MAGIC {
                    &self.stale
                } else {
                    &self.foreign
                };
                counter.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some((call, frame)) = self.plan.decode(id) else {
                self.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let seen = &self.seen[id as usize];
            let _ = seen.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
            if index + 1 == blocks && start != u64::MAX {
                let due = self.due_ns(start, call, frame);
                let micros = (now.saturating_sub(due) / 1_000).min(u64::from(u32::MAX)) as u32;
                self.latency_us
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(micros);
            }
        }
    }

    /// Planned frames that never arrived, and frames that arrived more than once.
    pub fn lost_and_doubled(&self) -> (usize, usize) {
        let mut lost = 0;
        let mut doubled = 0;
        for seen in &self.seen[1..] {
            match seen.load(Ordering::Relaxed) {
                0 => lost += 1,
                1 => {}
                _ => doubled += 1,
            }
        }
        (lost, doubled)
    }
}

/// The outcome of one run: what the generator did and what arrived.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub calls: usize,
    pub calls_connected: usize,
    pub frames_planned: usize,
    pub frames_sent: usize,
    pub lost: usize,
    pub doubled: usize,
    /// Blocks that arrived but were not frames of the plan (corruption).
    pub foreign: usize,
    /// Blocks of an earlier phase that arrived during this one (its drain failed).
    pub stale: usize,
    /// From the last frame sent to the end of the drain: every upstream session closed and
    /// nothing more arriving for the quiet period (or the drain's limit reached).
    pub drain_ms: u64,
    /// Whether the drain ended because everything was delivered and closed (else its limit
    /// was reached, and frames still missing are lost).
    pub drained: bool,
    /// From every call connected to every upstream session open (`Drain::sessions_per_call`),
    /// before the grid started.
    pub upstream_ready_ms: u64,
    /// Latency from the due time of the frame completing a chunk to the chunk's arrival at
    /// the AssemblyAI simulator, µs: everything the generator, the path and the service
    /// added, including the generator's own lateness.
    pub latency_p50_us: u32,
    pub latency_p99_us: u32,
    pub latency_max_us: u32,
    /// How late the generator sent frames relative to their due time, µs (its own share).
    pub generator_lag_p50_us: u32,
    pub generator_lag_p99_us: u32,
    pub generator_lag_max_us: u32,
    /// Flushes a call's socket did not take within 1 ms (its frames waited in the write buffer
    /// until the sender next retried): a receiver that falls behind shows here.
    pub deferred_flushes: usize,
}

impl Report {
    /// The invariants a benchmark must not merely print: every planned frame arrived exactly
    /// once and nothing foreign arrived. Latency goals are reported, not asserted.
    pub fn check(&self) -> Result<(), String> {
        let mut broken = Vec::new();
        if self.lost > 0 {
            broken.push(format!("{} frame(s) lost", self.lost));
        }
        if self.doubled > 0 {
            broken.push(format!("{} frame(s) doubled", self.doubled));
        }
        if self.foreign > 0 {
            broken.push(format!("{} unknown block(s) arrived", self.foreign));
        }
        if self.stale > 0 {
            broken.push(format!(
                "{} block(s) of an earlier phase arrived (phases not isolated)",
                self.stale
            ));
        }
        if !self.drained {
            broken.push(format!(
                "not drained after {} ms (upstream sessions still open or audio still arriving)",
                self.drain_ms
            ));
        }
        if self.calls_connected < self.calls {
            broken.push(format!(
                "{} of {} streams connected",
                self.calls_connected, self.calls
            ));
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(format!("{} calls: {}", self.calls, broken.join(", ")))
        }
    }
}

/// The `q` quantile of samples (sorts them); 0 when there are none.
pub fn quantile_u32(values: &mut [u32], q: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[((values.len() as f64 * q) as usize).min(values.len() - 1)]
}

/// When a phase has delivered everything it will: `open()` (the upstream sessions still
/// open, e.g. `AssemblyAiSim::open_sessions`) is 0 and no block arrived for `quiet`; at the
/// latest after `limit`.
pub struct Drain {
    pub quiet: Duration,
    pub limit: Duration,
    pub open: Box<dyn Fn() -> usize + Send + Sync>,
    /// Upstream sessions each connected call opens when its stream starts: the grid starts
    /// once `open()` shows them all (at the latest after `limit`), so the phase measures
    /// calls streaming, not thousands of session handshakes in its first second. 0: start
    /// at once.
    pub sessions_per_call: usize,
}

impl Drain {
    /// Only quiet: no block for `quiet` (no way to see the sessions close).
    pub fn quiet(quiet: Duration) -> Self {
        Self {
            quiet,
            limit: quiet.max(Duration::from_secs(30)),
            open: Box::new(|| 0),
            sessions_per_call: 0,
        }
    }
}

/// Plays `plan` against the streams `url(call)` gives, then waits `settle` for the last
/// chunks to arrive (no chunk for `settle`). Connections are opened first (64 at a time);
/// the grid starts once all are open, so connection set-up is not counted as frame latency.
pub async fn play(
    plan: Plan,
    ledger: Arc<Ledger>,
    url: impl Fn(usize) -> String,
    settle: Duration,
) -> Report {
    play_drained(plan, ledger, url, Drain::quiet(settle)).await
}

/// Waits until `drain` says the phase delivered everything; whether it did, and how long.
async fn wait_drained(ledger: &Ledger, drain: &Drain) -> (bool, Duration) {
    let started = tokio::time::Instant::now();
    let poll = Duration::from_millis(50);
    let mut last = ledger.arrivals();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(poll).await;
        let now = ledger.arrivals();
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        }
        if (drain.open)() == 0 && quiet_since.elapsed() >= drain.quiet {
            return (true, started.elapsed());
        }
        if started.elapsed() >= drain.limit {
            return (false, started.elapsed());
        }
    }
}

/// As [`play`], with the end of the phase decided by `drain`: frames are counted lost only
/// once every upstream session has closed and nothing more arrives, so a path that is slow
/// (or a floor at its ceiling) shows as latency, not as loss.
pub async fn play_drained(
    plan: Plan,
    ledger: Arc<Ledger>,
    url: impl Fn(usize) -> String,
    drain: Drain,
) -> Report {
    let connect_slots = Arc::new(tokio::sync::Semaphore::new(64));
    let connecting: Vec<_> = (0..plan.calls)
        .map(|call| {
            let (url, slots) = (url(call), connect_slots.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire().await;
                connect(&url).await
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(plan.calls);
    for (call, task) in connecting.into_iter().enumerate() {
        if let Ok(Some(socket)) = task.await {
            sockets.push((call, socket));
        }
    }
    let connected = sockets.len();
    let waiting = Instant::now();
    let sessions = drain.sessions_per_call * connected;
    while (drain.open)() < sessions && waiting.elapsed() < drain.limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream_ready_ms = waiting.elapsed().as_millis() as u64;
    let ledger_tag = ledger.tag;
    // The grid starts a little ahead, so the sender is waiting for its first due time.
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    ledger.grid_start_ns.store(
        (start.into_std() - ledger.origin).as_nanos() as u64,
        Ordering::Relaxed,
    );
    // A thread of its own: on the runtime's worker, behind the simulator's tasks of 2,000
    // sessions, each due frame waited its turn in the run queue (lag p99 82 ms at 1,000
    // calls); on its own thread the kernel shares the core between the two (3.5 ms).
    let runtime = tokio::runtime::Handle::current();
    let sent = tokio::task::spawn_blocking(move || {
        runtime.block_on(stream_all(plan, sockets, start, ledger_tag))
    })
    .await
    .unwrap_or(Sent {
        frames: 0,
        lags: Vec::new(),
        deferred_flushes: 0,
    });
    let (frames_sent, mut lag) = (sent.frames, sent.lags);
    let (drained, drain_time) = wait_drained(&ledger, &drain).await;
    let (lost, doubled) = ledger.lost_and_doubled();
    let mut latency =
        std::mem::take(&mut *ledger.latency_us.lock().unwrap_or_else(|p| p.into_inner()));
    Report {
        calls: plan.calls,
        calls_connected: connected,
        frames_planned: plan.frames_planned(),
        frames_sent,
        lost,
        doubled,
        foreign: ledger.foreign.load(Ordering::Relaxed),
        stale: ledger.stale.load(Ordering::Relaxed),
        drain_ms: drain_time.as_millis() as u64,
        drained,
        upstream_ready_ms,
        latency_p50_us: quantile_u32(&mut latency, 0.5),
        latency_p99_us: quantile_u32(&mut latency, 0.99),
        latency_max_us: latency.last().copied().unwrap_or(0),
        generator_lag_p50_us: quantile_u32(&mut lag, 0.5),
        generator_lag_p99_us: quantile_u32(&mut lag, 0.99),
        generator_lag_max_us: lag.last().copied().unwrap_or(0),
        deferred_flushes: sent.deferred_flushes,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Option<Socket> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let start = r#"{"event":"start","sequence_number":"1","stream_id":"bench","start":{"call_control_id":"v3:bench","media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}"#;
    socket.send(Message::Text(start.into())).await.ok()?;
    Some(socket)
}

/// One call's side of the grid: its write half, and whether its last flush is still under
/// way (the socket did not take every byte at once; the rest waits in the write buffer).
struct Stream {
    call: usize,
    tx: futures_util::stream::SplitSink<Socket, Message>,
    reader: tokio::task::JoinHandle<()>,
    open: bool,
    pending: bool,
}

impl Stream {
    /// Pushes what is buffered towards the socket without waiting for it.
    fn flush_now(&mut self) {
        match self.tx.flush().now_or_never() {
            Some(Ok(())) => self.pending = false,
            Some(Err(_)) => self.open = false,
            None => self.pending = true,
        }
    }
}

/// How long the sender waits for a flush that did not go through at once before it leaves
/// it for later and goes on with the next call.
const FLUSH_WAIT: Duration = Duration::from_millis(1);

/// What [`stream_all`] did: frames sent, each slot's lag (µs) and the flushes the socket did
/// not take within [`FLUSH_WAIT`].
struct Sent {
    frames: usize,
    lags: Vec<u32>,
    deferred_flushes: usize,
}

/// Every connected call, both tracks, a frame each per 20 ms slot, each slot due on the grid
/// whatever happened to the previous one. One task, on a thread of its own, sends for all
/// calls in due order and sleeps only when it is ahead of the next due time: a timer and a task wake-up per call
/// and slot (50,000 a second at 1,000 calls) cost the generator's core more than the
/// sending, and made the generator the ceiling (docs/BENCHMARKS.md). A flush the socket
/// does not take within [`FLUSH_WAIT`] is not waited for further (so one slow socket does
/// not hold up the other calls while its write buffer has room): it is retried before the
/// sender next sleeps, and counted. A frame is never skipped.
async fn stream_all(
    plan: Plan,
    sockets: Vec<(usize, Socket)>,
    start: tokio::time::Instant,
    tag: u64,
) -> Sent {
    let mut streams: Vec<Stream> = sockets
        .into_iter()
        .map(|(call, socket)| {
            let (tx, mut rx) = socket.split();
            // The service may send marks or clears; read them so its writes never block.
            let reader = tokio::spawn(async move { while rx.next().await.is_some() {} });
            Stream {
                call,
                tx,
                reader,
                open: true,
                pending: false,
            }
        })
        .collect();
    let mut sent = Sent {
        frames: 0,
        lags: Vec::with_capacity(streams.len() * plan.frames),
        deferred_flushes: 0,
    };
    let mut payload = [0x55u8; FRAME_BYTES];
    payload[8..16].copy_from_slice(&tag.to_le_bytes());
    let mut encoded = String::with_capacity(FRAME_BYTES * 4 / 3 + 4);
    let mut pending: Vec<usize> = Vec::new();
    // The calls that connected, by call number.
    let mut stream_of: Vec<Option<usize>> = vec![None; plan.calls];
    for (index, stream) in streams.iter().enumerate() {
        if let Some(slot) = stream_of.get_mut(stream.call) {
            *slot = Some(index);
        }
    }
    for (call, chunk) in plan.send_order() {
        let Some(index) = stream_of[call] else {
            continue;
        };
        if !streams[index].open {
            continue;
        }
        let due = start + plan.due_after_start(call, chunk);
        if tokio::time::Instant::now() < due {
            // Ahead of the grid: first what the sockets did not take, then sleep.
            pending.retain(|&waiting| {
                streams[waiting].flush_now();
                streams[waiting].pending && streams[waiting].open
            });
            tokio::time::sleep_until(due).await;
        }
        sent.lags
            .push(due.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        let stream = &mut streams[index];
        for (track_index, track) in ["inbound", "outbound"].into_iter().enumerate() {
            let id = plan.frame_id(call, chunk, track_index);
            let copies = match plan.fault {
                Fault::DropFrame(dropped) if dropped == id => 0,
                Fault::DuplicateFrame(doubled) if doubled == id => 2,
                _ => 1,
            };
            payload[..8].copy_from_slice(&id.to_le_bytes());
            encoded.clear();
            STANDARD.encode_string(payload, &mut encoded);
            let sequence = chunk + 2;
            let frame = format!(
                r#"{{"event":"media","sequence_number":"{sequence}","stream_id":"bench","media":{{"track":"{track}","chunk":"{}","timestamp":"{}","payload":"{encoded}"}}}}"#,
                chunk + 1,
                (chunk + 1) * 20,
            );
            if copies == 2
                && stream
                    .tx
                    .feed(Message::Text(frame.clone().into()))
                    .await
                    .is_ok()
            {
                sent.frames += 1;
            }
            if copies > 0 {
                if stream.tx.feed(Message::Text(frame.into())).await.is_err() {
                    stream.open = false;
                    break;
                }
                sent.frames += 1;
            }
        }
        // Both tracks in one write, as Telnyx's frames of one instant travel together.
        if stream.open {
            // Most often a flush that does not go through at once is the call's reader
            // holding the socket for a moment (the two halves share it): wait that out,
            // but not a socket that is full. (The timer starts only if the flush does
            // not complete on its first poll.)
            match tokio::time::timeout(FLUSH_WAIT, stream.tx.flush()).await {
                Ok(Ok(())) => stream.pending = false,
                Ok(Err(_)) => stream.open = false,
                Err(_) => {
                    sent.deferred_flushes += 1;
                    if !stream.pending {
                        stream.pending = true;
                        pending.push(index);
                    }
                }
            }
        }
    }
    // Every call's stop at once, and a bound on the whole: one peer that stopped reading
    // must not hold up the others' stops, nor the phase.
    let stop = r#"{"event":"stop","stream_id":"bench"}"#;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(
            streams
                .iter_mut()
                .filter(|s| s.open)
                .map(|s| s.tx.send(Message::Text(stop.into()))),
        ),
    )
    .await;
    // Keep the sockets open until the service has forwarded the tail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(streams.iter_mut().map(|s| s.tx.close())),
    )
    .await;
    for stream in streams {
        stream.reader.abort();
    }
    sent
}

/// The floor: a bare tokio WebSocket relay doing only what any bridge must — find the
/// track and the payload in each frame by byte search (no JSON tree, no per-frame
/// allocation), decode the base64 into the track's batch, and forward 100 ms batches to an
/// upstream socket per track. Runs until the listener fails.
///
/// Like the bridge, it opens its upstream sessions when a stream starts (not when the first
/// batch is full, which made thousands of streams connect upstream in the same 100 ms and
/// overflow the simulator's accept queue), and closes them when the stream ends, so the
/// upstream side sees every session end and a benchmark can wait for that (its drain).
pub async fn floor_relay(listener: tokio::net::TcpListener, upstream: String, api_key: String) {
    let upstream = Arc::new((upstream, api_key));
    while let Ok((stream, _)) = listener.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            if let Ok(socket) =
                tokio_tungstenite::accept_async_with_config(stream, Some(telnyx_side_config()))
                    .await
            {
                relay_stream(socket, &upstream.0, &upstream.1).await;
            }
        });
    }
}

type Sink = crate::ws_client::Writer;

/// The floor's Telnyx-side socket has the bridge's buffers (`media::frames`): 2 KiB reads,
/// writes out as they are made. With tungstenite's defaults the floor zero-filled
/// 128 KiB on every read and held 128 KiB per socket, so it cost more CPU per frame and
/// memory per call than the bridge it is the floor of (docs/BENCHMARKS.md).
fn telnyx_side_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(crate::media::frames::SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(crate::media::frames::SOCKET_MAX_MESSAGE))
}

async fn relay_stream(
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    upstream: &str,
    api_key: &str,
) {
    const BATCH: usize = BATCH_FRAMES * FRAME_BYTES;
    let track_key = memchr::memmem::Finder::new(br#""track":""#);
    let payload_key = memchr::memmem::Finder::new(br#""payload":""#);
    let (_, mut rx) = socket.split();
    let (Some(inbound), Some(outbound)) = (
        open_upstream(upstream, api_key).await,
        open_upstream(upstream, api_key).await,
    ) else {
        return;
    };
    let mut sinks: [Sink; TRACKS] = [inbound, outbound];
    let mut batches = [
        Vec::with_capacity(BATCH + 256),
        Vec::with_capacity(BATCH + 256),
    ];
    while let Some(Ok(message)) = rx.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let bytes = text.as_bytes();
        let (Some(track_at), Some(payload_at)) = (track_key.find(bytes), payload_key.find(bytes))
        else {
            continue;
        };
        let track = usize::from(bytes.get(track_at + 9) == Some(&b'o'));
        let payload = &bytes[payload_at + 11..];
        let Some(end) = memchr::memchr(b'"', payload) else {
            continue;
        };
        let batch = &mut batches[track];
        let filled = batch.len();
        batch.resize(filled + FRAME_BYTES * 2, 0);
        let Ok(decoded) = STANDARD.decode_slice(&payload[..end], &mut batch[filled..]) else {
            batch.truncate(filled);
            continue;
        };
        batch.truncate(filled + decoded);
        if batch.len() < BATCH {
            continue;
        }
        let sent = sinks[track]
            .send(&[crate::ws_client::Outgoing::Binary(batch)])
            .await;
        batch.clear();
        if sent.is_err() {
            return;
        }
    }
    // The stream ended: end the upstream sessions (a close frame each), as the bridge does.
    for sink in &mut sinks {
        let _ = sink.close(1000, "").await;
    }
}

async fn open_upstream(url: &str, api_key: &str) -> Option<Sink> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().ok()?;
    request
        .headers_mut()
        .insert("authorization", api_key.parse().ok()?);
    // The bridge's upstream sockets: its client, buffers and TLS config.
    let socket = crate::ws_client::connect(
        request,
        &crate::tls::websocket_client_config(),
        crate::providers::assemblyai::socket_options(),
    )
    .await
    .ok()?;
    let mut reader = socket.reader;
    tokio::spawn(async move {
        while let Ok(incoming) = reader.next().await {
            if matches!(incoming, crate::ws_client::Incoming::Close(_)) {
                break;
            }
        }
    });
    Some(socket.writer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 100 ms chunk of `call`'s first five frames on `track`, tagged `tag`.
    fn chunk(plan: &Plan, tag: u64, call: usize, track: usize) -> Vec<u8> {
        let mut chunk = Vec::new();
        for frame in 0..5 {
            let mut block = [0x55u8; FRAME_BYTES];
            block[..8].copy_from_slice(&plan.frame_id(call, frame, track).to_le_bytes());
            block[8..16].copy_from_slice(&tag.to_le_bytes());
            chunk.extend_from_slice(&block);
        }
        chunk
    }

    #[test]
    fn a_late_frame_of_an_earlier_phase_is_stale_not_a_frame_of_this_one() {
        let plan = Plan {
            calls: 2,
            frames: 5,
            fault: Fault::None,
        };
        let earlier = Ledger::new(plan);
        let current = Ledger::new(plan);
        assert_ne!(earlier.tag(), current.tag(), "every phase has its own tag");
        // The earlier phase's frames have the same ids as this phase's.
        current.on_chunk(&chunk(&plan, earlier.tag(), 0, 0));
        current.on_chunk(&chunk(&plan, current.tag(), 0, 0));
        assert_eq!(current.stale.load(Ordering::Relaxed), 5);
        assert_eq!(current.foreign.load(Ordering::Relaxed), 0);
        // Only this phase's copy counts: call 0's inbound track once, the rest missing.
        assert_eq!(current.lost_and_doubled(), (15, 0));
        assert_eq!(current.arrivals(), 10);
    }

    #[test]
    fn calls_end_their_batches_spread_over_a_batch_and_are_sent_in_due_order() {
        for calls in [3, 7, 500] {
            let plan = Plan {
                calls,
                frames: 50,
                fault: Fault::None,
            };
            // Where in the 100 ms batch period each call's batches end: calls take turns
            // over its five 20 ms windows.
            let mut per_window = [0usize; BATCH_FRAMES];
            for call in 0..plan.calls {
                let first_end = plan.due_after_start(call, BATCH_FRAMES - 1);
                let window = first_end.as_millis() / FRAME_PERIOD.as_millis() - 4;
                per_window[window as usize] += 1;
            }
            let expected: Vec<usize> = (0..BATCH_FRAMES)
                .map(|w| (calls + BATCH_FRAMES - 1 - w) / BATCH_FRAMES)
                .collect();
            assert_eq!(per_window.to_vec(), expected, "{calls} calls");
            // The sender's order is due order, and has every frame of every call once.
            let order: Vec<(usize, usize)> = plan.send_order().collect();
            let dues: Vec<Duration> = order
                .iter()
                .map(|&(call, chunk)| plan.due_after_start(call, chunk))
                .collect();
            assert!(dues.is_sorted(), "{calls} calls");
            let mut each: Vec<(usize, usize)> = order.clone();
            each.sort_unstable();
            each.dedup();
            assert_eq!(each.len(), order.len(), "{calls} calls: a frame twice");
            assert_eq!(order.len() * TRACKS, plan.frames_planned(), "{calls} calls");
        }
    }

    #[test]
    fn a_block_without_a_phase_tag_is_foreign() {
        let plan = Plan {
            calls: 1,
            frames: 5,
            fault: Fault::None,
        };
        let ledger = Ledger::new(plan);
        ledger.on_chunk(&chunk(&plan, 0x5555_5555_5555_5555, 0, 1));
        assert_eq!(ledger.foreign.load(Ordering::Relaxed), 5);
        assert_eq!(ledger.stale.load(Ordering::Relaxed), 0);
    }
}
