-- Usage, cost and quotas (docs/USAGE.md).
--
-- `usage_ledger`: one append-only row per unit a vendor bills us for, written once per
-- source event. `source_key` names that event (`telnyx:call_seconds:<leg>`,
-- `assemblyai:session:<id>`, ...): a redelivered webhook, a re-run job or a second
-- `Termination` finds its key taken and writes nothing. Rows are never updated; they go
-- only with their organisation.
create table usage_ledger (
    id bigint generated always as identity primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    -- The call the units were spent on, when there is one (a recording download has none
    -- of its own; an imported recording has its call's). Kept when the call row goes.
    call_id uuid,
    leg_id uuid,
    -- Who placed the call (or asked for the download), for `group_by=user`.
    user_id text,
    vendor text not null
        check (vendor in ('telnyx', 'assemblyai', 'deepl', 'openai', 'elevenlabs', 'cache', 'r2')),
    unit text not null check (length(unit) between 1 and 64),
    quantity numeric not null check (quantity >= 0),
    source_key text not null unique check (length(source_key) between 1 and 300),
    occurred_at timestamptz not null,
    metadata jsonb not null default '{}',
    recorded_at timestamptz not null default now()
);
create index usage_ledger_org_time_idx on usage_ledger (organisation_id, occurred_at);
create index usage_ledger_call_idx on usage_ledger (call_id) where call_id is not null;

create function usage_ledger_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'usage_ledger is append-only';
end $$;
create trigger usage_ledger_no_update before update on usage_ledger
    for each row execute function usage_ledger_append_only();

-- Per-organisation quotas; no row (or a null column) means the deployment's default
-- (`USAGE_DEFAULT_*`). `at_limit`: what happens to a live call when a monthly quota is
-- reached: `end` (announce and hang up) or `continue` (keep going, flagged).
create table usage_quotas (
    organisation_id uuid primary key references organisations (id) on delete cascade,
    monthly_minutes bigint check (monthly_minutes >= 0),
    concurrent_calls bigint check (concurrent_calls >= 0),
    monthly_spend_cap numeric check (monthly_spend_cap >= 0),
    at_limit text check (at_limit in ('end', 'continue')),
    updated_at timestamptz not null default now()
);

-- Set once per call when it crossed 80 % / 100 % of a monthly quota, so the event is sent
-- once however many replicas check.
create table usage_quota_marks (
    organisation_id uuid not null references organisations (id) on delete cascade,
    call_id uuid not null,
    quota text not null,
    level int not null check (level in (80, 100)),
    at timestamptz not null default now(),
    -- At 100 % with `at_limit = 'end'`: when the call was hung up, after its announcement.
    hangup_at timestamptz,
    primary key (call_id, quota, level)
);

-- Reconciliation findings operators read (`GET /internal/debug/usage-drift`, docs/USAGE.md).
create table usage_drift (
    id bigint generated always as identity primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    call_id uuid,
    vendor text not null,
    session_id text not null,
    ledger_seconds numeric not null,
    -- Null: the session ended without AssemblyAI reporting its duration (no `Termination`).
    reported_seconds numeric,
    found_at timestamptz not null default now(),
    unique (vendor, session_id)
);
