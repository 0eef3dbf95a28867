-- Each leg of an interpreted call has its own media stream (docs/CALLS.md): its bridge beats,
-- ends and is re-attached on its own. `leg` is `call` for a one-leg call's single stream, or
-- the leg's role. Existing rows are one-leg streams.
alter table media_streams add column leg text not null default 'call'
    check (leg in ('call', 'agent', 'remote'));
alter table media_streams drop constraint media_streams_pkey;
alter table media_streams add primary key (call_id, leg);
