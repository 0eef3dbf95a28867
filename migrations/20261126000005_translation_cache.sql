-- Translations already made, keyed by the text's SHA-256 and the language pair.
create table translation_cache (
    text_sha256 bytea not null,
    source_language text not null,
    target_language text not null,
    translation text not null,
    engine text not null,
    created_at timestamptz not null default now(),
    primary key (text_sha256, source_language, target_language)
);
