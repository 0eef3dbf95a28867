-- Inbound interpreted lines (docs/CALLS.md, "Inbound lines"): one of an organisation's
-- numbers answers its callers, greets them in their language, rings the agent and carries
-- the call as an interpreted call. A number without a row here keeps the one-leg behaviour.

create table lines (
    -- One line per number; it goes with the number.
    phone_number_id uuid primary key references phone_numbers (id) on delete cascade,
    organisation_id uuid not null references organisations (id) on delete cascade,
    -- E.164 of the agent rung for each caller.
    forward_to text not null,
    -- BCP-47 or `auto` (detected from the caller's speech).
    caller_language text not null,
    -- With `auto`: the languages the greeting and apology are spoken in, in order.
    caller_languages text[] not null default '{}'
        check (cardinality(caller_languages) <= 4),
    agent_language text not null,
    caller_voice_id text,
    agent_voice_id text,
    -- As written by the organisation, in the agent's language.
    greeting text not null,
    apology text,
    -- What callers hear: [{"language", "greeting", "apology"}], translated when saved.
    prompts jsonb not null,
    agent_timeout_secs integer not null check (agent_timeout_secs between 5 and 120),
    -- What each party hears of the other's own voice (calls.original_audio of its calls).
    original_audio text not null default 'ducked'
        check (original_audio in ('off', 'ducked', 'full')),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
create index lines_organisation_idx on lines (organisation_id);

-- A call that came in on a line: which line, what its caller hears (a snapshot of the line
-- when the call arrived, so editing a line never changes a call in progress), and how it
-- turned out.
alter table calls
    add column line_number_id uuid references phone_numbers (id) on delete set null,
    add column line_script jsonb,
    -- Set once: the greeting was started, the apology was started.
    add column line_greeting_at timestamptz,
    add column line_apology_at timestamptz,
    add column line_outcome text
        check (line_outcome in ('connected', 'agent_no_answer', 'agent_failed', 'caller_abandoned'));
