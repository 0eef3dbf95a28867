-- Membership by invitation (issue 14 item 5, docs/adr/0032-membership-by-invitation.md): an
-- admin or owner invites an email address; the person signed in with that address accepts or
-- declines. Nothing here refers to Auth.js users: inviting never looks one up, so the answer
-- is the same whether the address has an account or not. Accepting or declining deletes the
-- row; one pending invitation per organisation and address (inviting again renews it).
create table invitations (
    id uuid primary key,
    organisation_id uuid not null references organisations (id) on delete cascade,
    email text not null check (length(email) between 3 and 320),
    role text not null check (role in ('owner', 'admin', 'member')),
    -- SHA-256 of the accept token: the token itself is shown once, to the inviter.
    token_sha256 bytea not null check (length(token_sha256) = 32),
    invited_by text not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null
);

create unique index invitations_organisation_email_idx on invitations (organisation_id, lower(email));
create index invitations_email_idx on invitations (lower(email));
