-- Live transcripts from the media bridge: final turns per call and track, explicit gaps where
-- audio could not be transcribed, and the bridge heartbeat used to notice dead replicas.

create table transcript_turns (
    call_id uuid not null references calls (id) on delete cascade,
    track text not null check (track in ('inbound', 'outbound', 'browser')),
    -- Our order per call and track, continuous across AssemblyAI reconnects.
    turn_index integer not null,
    session_id text not null,
    text text not null,
    words jsonb not null default '[]',
    confidence double precision,
    -- Milliseconds from the start of the track's audio.
    start_ms bigint,
    end_ms bigint,
    created_at timestamptz not null default now(),
    primary key (call_id, track, turn_index)
);

create table transcript_gaps (
    id bigserial primary key,
    call_id uuid not null references calls (id) on delete cascade,
    track text not null,
    start_ms bigint not null,
    duration_ms bigint not null,
    reason text not null,
    created_at timestamptz not null default now()
);
create index transcript_gaps_call_idx on transcript_gaps (call_id, track, start_ms);

create table media_streams (
    call_id uuid primary key references calls (id) on delete cascade,
    replica text not null,
    stream_id text,
    connected_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    ended_at timestamptz
);
