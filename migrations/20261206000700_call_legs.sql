-- Interpreted calls: a call has parties, each on its own Telnyx leg with its own media
-- stream, language and voice (docs/CALLS.md). Every existing call becomes a call with one
-- leg, so rows written before this migration keep reading the same.

create table call_legs (
    id uuid primary key,
    call_id uuid not null references calls (id) on delete cascade,
    -- `agent`: the organisation's side; `remote`: the other party.
    role text not null check (role in ('agent', 'remote')),
    -- E.164 number of this party.
    number text not null,
    -- BCP-47 (`en`, `pt-BR`) or `auto` (detected per turn); null on legacy legs without one.
    language text,
    -- The ElevenLabs voice this party hears translations in.
    voice_id text,
    -- Same ranked statuses as calls: created < dialing < initiated < answered < ended = failed.
    status text not null default 'created'
        check (status in ('created', 'dialing', 'initiated', 'answered', 'ended', 'failed')),
    telnyx_call_control_id text unique,
    telnyx_call_leg_id text,
    telnyx_call_session_id text,
    -- Set once our dial for this leg was accepted (the remote leg is dialed on the agent's
    -- answer; a redelivered call.answered never dials twice).
    dial_requested_at timestamptz,
    -- Set once our hangup of this leg (because the other party hung up) was accepted.
    hangup_requested_at timestamptz,
    stream_state text,
    stream_state_at timestamptz,
    hangup_cause text,
    hangup_source text,
    sip_hangup_cause text,
    failure_reason text,
    initiated_at timestamptz,
    answered_at timestamptz,
    ended_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    unique (call_id, role)
);

-- `interpreted`: two legs, one media stream each (inbound track), the service carries the
-- conversation. Otherwise the legacy shape: one leg, one stream with both tracks.
alter table calls add column interpreted boolean not null default false;
-- off | ducked | full: whether a party also hears the other's original voice.
alter table calls add column original_audio text not null default 'off'
    check (original_audio in ('off', 'ducked', 'full'));

-- Every existing call: one leg for the party Telnyx dialed (outbound) or that called in.
insert into call_legs (id, call_id, role, number, language, voice_id, status,
                       telnyx_call_control_id, telnyx_call_leg_id, telnyx_call_session_id,
                       dial_requested_at, stream_state, stream_state_at, hangup_cause,
                       hangup_source, sip_hangup_cause, failure_reason, initiated_at,
                       answered_at, ended_at, created_at)
select gen_random_uuid(), id, 'remote',
       case when direction = 'outbound' then to_number else from_number end,
       source_language, voice_id, status,
       telnyx_call_control_id, telnyx_call_leg_id, telnyx_call_session_id,
       case when telnyx_call_control_id is not null then created_at end,
       stream_state, stream_state_at, hangup_cause, hangup_source, sip_hangup_cause,
       failure_reason, initiated_at, answered_at, ended_at, created_at
from calls;

-- Turns of an interpreted call are stored per party (`agent`, `remote`), with the language
-- AssemblyAI detected when the party's language is `auto`.
alter table transcript_turns drop constraint transcript_turns_track_check;
alter table transcript_turns add constraint transcript_turns_track_check
    check (track in ('inbound', 'outbound', 'browser', 'agent', 'remote'));
alter table transcript_turns add column language text;
