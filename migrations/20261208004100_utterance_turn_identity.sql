-- An utterance names the turn it speaks by the turn's identity (AssemblyAI session and turn
-- order, docs/adr/0017-turn-identity-across-replicas.md), not only by the index the speaker's
-- bridge proposed before the turn was stored: a turn stored under another index (renumbered)
-- is then still recognised as already given to its listener, and its utterance is re-linked
-- to the index it was stored under. Rows from before stay null and read as before.
alter table utterances add column source_session_id text,
                       add column source_turn_order bigint;
