-- Issue 13 item 9 (ADR 0036): a line may record its calls, each leg on its own — the caller's
-- leg from the answer command (it is answered, not dialed), the agent's from its dial.
alter table lines add column record boolean not null default false;
