with parsed as (
        select read.body, read.refusal,
               (select count(*) from regexp_matches($2::text, '(?<!\\)((?:\\\\)*)\\u0000', 'g')) as nul_replaced
        from webhook_body($2::text) read
    ), event as (
        select body, nul_replaced, refusal is not null as not_json, case
            when refusal is not null then 'the body is not JSON: ' || refusal
            else case $1::text
            when 'telnyx' then case
                when (jsonb_typeof(body) = 'object' and body ? 'data') is not true then 'missing data'
                when (jsonb_typeof(body->'data'->'id') = 'string'
                      and octet_length(body->'data'->>'id') between 1 and 200) is not true then 'missing data.id'
                when (jsonb_typeof(body->'data'->'event_type') = 'string'
                      and octet_length(body->'data'->>'event_type') between 1 and 100) is not true then 'missing data.event_type'
                end
            when 'assemblyai' then case
                when (jsonb_typeof(body->'transcript_id') = 'string'
                      and octet_length(body->>'transcript_id') between 1 and 200) is not true then 'missing transcript_id'
                when (jsonb_typeof(body->'status') = 'string'
                      and octet_length(body->>'status') between 1 and 40) is not true then 'missing status'
                end
            else 'unknown provider'
            end end as rejected,
            case $1::text when 'telnyx' then body->'data'->>'id'
                else (body->>'transcript_id') || ':' || (body->>'status') end as event_id,
            case $1::text when 'telnyx' then replace(body->'data'->>'event_type', '_', '.')
                else 'transcript.' || (body->>'status') end as event_type,
            case when $1::text = 'telnyx' then body->'data'->>'occurred_at' end as occurred_text
        from parsed
    ), stamped as (
        select event.*, case
            when jsonb_typeof(body->'data'->'occurred_at') = 'string'
             and occurred_text ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?([Zz]|[+-](0[0-9]|1[0-5]):[0-5][0-9])$'
             and substr(occurred_text, 1, 4) <> '0000'
             and extract(month from make_date(substr(occurred_text, 1, 4)::int, substr(occurred_text, 6, 2)::int, 1)
                                    + (substr(occurred_text, 9, 2)::int - 1)) = substr(occurred_text, 6, 2)::int
            then occurred_text::timestamptz
            end as occurred_at
        from event
    ), inserted as (
        insert into webhook_inbox (provider, event_id, event_type, occurred_at, payload, received_via)
        select $1, event_id, event_type, occurred_at, body, $3 from stamped where rejected is null
        on conflict (provider, event_id) do nothing
        returning provider, event_id
    ), enqueued as (
        insert into jobs (kind, payload, dedupe_key)
        select provider || '.event', jsonb_build_object('provider', provider, 'event_id', event_id),
               'webhook:' || provider || ':' || event_id
        from inserted
        on conflict (dedupe_key) where dedupe_key is not null do nothing
        returning id
    )
    select rejected, not_json, event_id, nul_replaced, (select count(*) from inserted) as inserted from stamped
