-- Reads a verified webhook body for the inbox statement (src/inbox.rs
-- INBOX_INSERT_SQL, run by the container and, through Hyperdrive, by the edge shim): jsonb
-- from the raw text, each `\u0000` escape (not one after an escaped backslash) replaced by
-- `\ufffd` first (ADR 0020). A body PostgreSQL will not read (invalid JSON: class 22; nesting
-- deeper than its stack: 54001) gives `refusal`, its message and detail, instead of an error,
-- so no error crosses the wire and both sides answer the same 400 from the same row (ADR 0030).
create function webhook_body(raw text, out body jsonb, out refusal text)
language plpgsql immutable parallel safe as $$
declare
    message text;
    detail text;
begin
    body := regexp_replace(raw, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g')::jsonb;
exception when data_exception or statement_too_complex then
    get stacked diagnostics message = message_text, detail = pg_exception_detail;
    refusal := case when coalesce(detail, '') = '' then message else message || ' (' || detail || ')' end;
end
$$;
