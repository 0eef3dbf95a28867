-- The organisation a user chose last (PUT /api/me/active-organisation): the one requests act
-- in when they name none — no X-Org-Id header, no org_id query parameter — as an EventSource,
-- a WebSocket or a plain link cannot send headers. One row per Auth.js user id (text, like
-- memberships.user_id). Read only through memberships, so a removed membership is ignored
-- rather than trusted; deleting the organisation clears the choice.
create table user_settings (
    user_id text primary key,
    active_organisation_id uuid references organisations (id) on delete set null,
    updated_at timestamptz not null default now()
);
