-- Recordings on R2 (docs/RECORDINGS.md): one row per recording, one row per immutable
-- version (R2 has no object versioning, so versions are ours), the multipart uploads in
-- flight (so an abort can be checked and a crashed one swept), and post-call transcripts.

-- Per-organisation retention; null = the deployment default (RECORDINGS_RETENTION_DAYS).
alter table organisations add column recording_retention_days integer
    check (recording_retention_days is null or recording_retention_days between 1 and 3650);

create table recordings (
    id uuid primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    call_id uuid references calls (id) on delete set null,
    -- 'upload' (streamed through us), 'direct' (presigned PUT), 'telnyx' (imported).
    source text not null check (source in ('upload', 'direct', 'telnyx')),
    -- Telnyx's recording identity: a redelivered or repeated call.recording.saved finds it.
    telnyx_recording_id text unique,
    -- 'single' or 'dual' (Telnyx `channels`); dual is transcribed as multichannel.
    channels text,
    created_at timestamptz not null default now()
);
create index recordings_org_created_idx on recordings (organisation_id, created_at desc, id desc);
create index recordings_call_idx on recordings (call_id, created_at) where call_id is not null;

create table recording_versions (
    recording_id uuid not null references recordings (id) on delete cascade,
    version integer not null check (version > 0),
    -- orgs/{org}/calls/{call|none}/recordings/{recording}/v{n}.{ext}; never rewritten.
    object_key text not null unique,
    -- 'pending' until the bytes are in place and checked; only 'stored' versions are served.
    status text not null default 'pending' check (status in ('pending', 'stored')),
    content_type text not null,
    -- Expected size while pending (direct uploads), actual size once stored.
    size_bytes bigint check (size_bytes is null or size_bytes >= 0),
    -- Hex SHA-256 of the stored bytes.
    sha256 text check (sha256 is null or sha256 ~ '^[0-9a-f]{64}$'),
    -- Direct uploads land on this key first and are copied to `object_key` on completion.
    staging_key text,
    created_at timestamptz not null default now(),
    stored_at timestamptz,
    primary key (recording_id, version)
);
create index recording_versions_pending_idx on recording_versions (created_at) where status = 'pending';

-- Multipart uploads between CreateMultipartUpload and Complete/Abort. A row left behind
-- means a process died mid-upload; the cron aborts it (R2 would only after 7 days).
create table multipart_uploads (
    upload_id text primary key,
    object_key text not null,
    started_at timestamptz not null default now()
);

create table post_call_transcripts (
    recording_id uuid not null references recordings (id) on delete cascade,
    version integer not null,
    call_id uuid references calls (id) on delete set null,
    organisation_id uuid not null references organisations (id) on delete cascade,
    assemblyai_transcript_id text unique,
    status text not null check (status in ('submitted', 'completed', 'error')),
    multichannel boolean not null default false,
    text text,
    words jsonb,
    utterances jsonb,
    language_code text,
    audio_duration_ms bigint,
    error text,
    submitted_at timestamptz not null default now(),
    completed_at timestamptz,
    primary key (recording_id, version)
);
create index post_call_transcripts_call_idx on post_call_transcripts (call_id, submitted_at desc);
