-- Organisations (tenants) and who belongs to them. Users are Auth.js users, referenced by
-- their id as text: Auth.js owns that table (integer ids with @auth/pg-adapter, but other
-- adapters use uuids), so there is no foreign key across the schemas.

create table organisations (
    id uuid primary key,
    name text not null check (length(name) between 1 and 200),
    -- Set only for the personal organisation made the first time a user is seen; unique, so
    -- two replicas seeing the same new user concurrently create one.
    personal_owner_id text unique,
    created_at timestamptz not null default now()
);

create table memberships (
    organisation_id uuid not null references organisations (id) on delete cascade,
    user_id text not null,
    role text not null check (role in ('owner', 'admin', 'member')),
    created_at timestamptz not null default now(),
    primary key (organisation_id, user_id)
);

create index memberships_user_id_idx on memberships (user_id);
