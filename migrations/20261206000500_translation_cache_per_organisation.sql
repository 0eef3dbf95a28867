-- The translation cache becomes per organisation (issue 14): a global cache let any tenant
-- learn, from `engine: "cache"`, that an exact sentence was spoken in another tenant's call.
-- Existing rows cannot be attributed to an organisation, so they are dropped: a cache, losing
-- it costs provider calls, never data. Rows go with their organisation, and the cron purges
-- them under the organisation's recording retention (created_at index).
drop table translation_cache;

create table translation_cache (
    organisation_id uuid not null references organisations (id) on delete cascade,
    text_sha256 bytea not null,
    source_language text not null,
    target_language text not null,
    translation text not null,
    engine text not null,
    created_at timestamptz not null default now(),
    primary key (organisation_id, text_sha256, source_language, target_language)
);
create index translation_cache_created_idx on translation_cache (created_at);
