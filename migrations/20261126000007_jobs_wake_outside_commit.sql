-- NOTIFY inside a transaction takes a database-wide lock that is held until the transaction's
-- commit record is flushed, so every enqueuing commit waited for the one before it (measured:
-- 452 vs 11,281 inserts/s at 32 clients). The container now wakes workers itself after its
-- commit, coalesced (src/jobs/bell.rs, docs/adr/0012). Writers that do not — the edge shim's
-- webhook inserts (received_via <> 'origin') — still wake them from inside their transaction.
drop trigger jobs_notify on jobs;
drop function jobs_notify();

create function webhook_inbox_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('callbridge_jobs', '');
    return null;
end $$;
create trigger webhook_inbox_notify after insert on webhook_inbox
    for each row when (new.received_via is distinct from 'origin')
    execute function webhook_inbox_notify();
