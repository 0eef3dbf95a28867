#!/usr/bin/env bash
# `make dev-session`: a development user and a 30-day session in the `make dev` database,
# printed as a bearer token for curl (what the frontend's Auth.js would create at sign-in).
# Development only: it writes straight into the Auth.js tables `make dev` created.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
ensure_postgres
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/callbridge}"
schema="${AUTH_SCHEMA:-authjs}"
email="${DEV_EMAIL:-dev@callbridge.local}"
token=$(python3 -c 'import uuid; print(uuid.uuid4())')
psql "$url" -v ON_ERROR_STOP=1 -qAt \
  -v email="$email" -v token="$token" >/dev/null <<SQL
insert into $schema.users (name, email) select 'Developer', :'email'
  where not exists (select 1 from $schema.users where email = :'email');
insert into $schema.sessions ("userId", expires, "sessionToken")
  select id, now() + interval '30 days', :'token' from $schema.users where email = :'email' order by id limit 1;
SQL
echo "$token"
