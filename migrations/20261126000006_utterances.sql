-- Translated utterances spoken back into calls: what was said, what we said for it, whether
-- the listener heard it (mark echoes), and how long each stage took.
create table utterances (
    call_id uuid not null references calls (id) on delete cascade,
    seq integer not null,
    -- The track whose final turn this translates; the listener is the other one.
    source_track text not null,
    source_turn_index integer not null,
    original_text text not null,
    translated_text text,
    source_language text,
    target_language text,
    engine text,
    -- queued → playing → played | cut | never_played; failed if translation or TTS failed.
    status text not null default 'queued'
        check (status in ('queued', 'playing', 'played', 'cut', 'never_played', 'failed')),
    audio_ms integer,
    -- Roughly how far into the utterance the listener cut in.
    cut_at_ms integer,
    end_of_turn_at timestamptz not null,
    translated_at timestamptz,
    first_tts_byte_at timestamptz,
    first_frame_sent_at timestamptz,
    mark_echoed_at timestamptz,
    error text,
    created_at timestamptz not null default now(),
    primary key (call_id, seq)
);
