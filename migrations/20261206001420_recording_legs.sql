-- Issue 13 item 9 (ADR 0036): each leg of an interpreted call is recorded on its own, and its
-- recording says whose leg it is. Null for every other recording (one-leg calls, uploads).
alter table recordings add column leg text check (leg in ('agent', 'remote'));
