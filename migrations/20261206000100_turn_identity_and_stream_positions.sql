-- A final turn is identified by the AssemblyAI session that produced it and its turn_order
-- there (docs/adr/0017-turn-identity-across-replicas.md): unique across reconnects, replicas
-- and re-attached streams. The same (session, turn) twice is a true duplicate and is ignored;
-- `turn_index` stays the per-call, per-track display order and is never reused.
-- Rows stored before this migration have no turn_order (null) and read as before.
alter table transcript_turns add column turn_order bigint;
create unique index transcript_turns_session_turn_idx
    on transcript_turns (call_id, track, session_id, turn_order);

-- Where each track of a call's media stream had got to: the end of the last frame received
-- (milliseconds into the track's audio) and when it arrived. A stream re-attached on
-- another replica continues the track's clock from here, and the audio in between is the
-- re-attach gap (docs/MEDIA_BRIDGE.md).
create table media_stream_positions (
    call_id uuid not null references calls (id) on delete cascade,
    track text not null,
    end_ms bigint not null,
    frame_at timestamptz not null,
    primary key (call_id, track)
);
