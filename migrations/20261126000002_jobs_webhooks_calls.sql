-- The job queue, the webhook inbox, phone numbers, calls and their durable event log.

-- Jobs: claimed with FOR UPDATE SKIP LOCKED under a lease; retried with backoff; `dead`
-- keeps the last error. The JSON envelope is documented in docs/JOBS.md.
create table jobs (
    id bigserial primary key,
    kind text not null,
    payload jsonb not null default '{}',
    dedupe_key text,
    status text not null default 'pending'
        check (status in ('pending', 'running', 'done', 'dead')),
    attempts integer not null default 0,
    max_attempts integer not null default 10 check (max_attempts > 0),
    run_at timestamptz not null default now(),
    locked_until timestamptz,
    locked_by text,
    last_error text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz
);
-- A dedupe key is unique for as long as its job row exists (webhook events: forever).
create unique index jobs_dedupe_key_idx on jobs (dedupe_key) where dedupe_key is not null;
create index jobs_ready_idx on jobs (run_at, id) where status = 'pending';
create index jobs_lease_idx on jobs (locked_until) where status = 'running';

-- Wake workers on any insert, whoever made it (the container or the edge via Hyperdrive).
-- NOTIFY is transactional: it is delivered when the enqueueing transaction commits.
create function jobs_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('callbridge_jobs', '');
    return null;
end $$;
create trigger jobs_notify after insert on jobs for each statement execute function jobs_notify();

-- Verified webhook deliveries, one row per provider event id: a duplicate is a no-op.
create table webhook_inbox (
    provider text not null,
    event_id text not null,
    event_type text not null,
    occurred_at timestamptz,
    payload jsonb not null,
    -- 'origin' (the container) or 'edge' (the Worker shim, through Hyperdrive).
    received_via text not null default 'origin',
    received_at timestamptz not null default now(),
    processed_at timestamptz,
    primary key (provider, event_id)
);

create table phone_numbers (
    id uuid primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    e164 text not null unique check (e164 ~ '^\+[1-9][0-9]{1,14}$'),
    label text,
    created_at timestamptz not null default now()
);
create index phone_numbers_org_idx on phone_numbers (organisation_id, created_at);

-- Statuses only move forward, so events applied in any order converge on the same state.
create function call_status_rank(status text) returns integer language sql immutable as $$
    select case status
        when 'created' then 0 when 'dialing' then 1 when 'initiated' then 2
        when 'answered' then 3 when 'ended' then 4 when 'failed' then 4 else -1 end
$$;

create table calls (
    id uuid primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    direction text not null check (direction in ('outbound', 'inbound')),
    from_number text not null,
    to_number text not null,
    source_language text,
    target_language text,
    voice_id text,
    record boolean not null default false,
    -- Ranked statuses only move forward: created < dialing < initiated < answered < ended.
    status text not null default 'created'
        check (status in ('created', 'dialing', 'initiated', 'answered', 'ended', 'failed')),
    created_by text,
    telnyx_call_control_id text unique,
    telnyx_call_session_id text,
    telnyx_call_leg_id text,
    stream_state text,
    stream_state_at timestamptz,
    hangup_cause text,
    hangup_source text,
    sip_hangup_cause text,
    failure_reason text,
    -- Set once our answer command for an inbound call was accepted: a redelivered
    -- call.initiated never answers twice.
    answer_requested_at timestamptz,
    initiated_at timestamptz,
    answered_at timestamptz,
    ended_at timestamptz,
    event_seq bigint not null default 0,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index calls_org_created_idx on calls (organisation_id, created_at desc, id desc);

-- The durable per-call event log that SSE subscribers on any replica read from.
create table call_events (
    call_id uuid not null references calls (id) on delete cascade,
    seq bigint not null,
    kind text not null,
    data jsonb not null default '{}',
    occurred_at timestamptz not null default now(),
    created_at timestamptz not null default now(),
    primary key (call_id, seq)
);
