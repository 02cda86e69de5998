#!/bin/sh
# Makes the cluster, the database and its owner on the first start, then runs PostgreSQL.
# POSTGRES_PASSWORD is required; POSTGRES_USER and POSTGRES_DB default to orchestrator.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
USER_NAME="${POSTGRES_USER:-orchestrator}"
DATABASE="${POSTGRES_DB:-orchestrator}"
PORT="${PGPORT:-5432}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password_file="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
  initdb -D "$PGDATA" --username=postgres --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p $PORT" -w start >/dev/null
  # psql quotes the values itself (:"name", :'literal'): any password or name is safe.
  psql -v ON_ERROR_STOP=1 -p "$PORT" -U postgres -d postgres -q \
    -v owner="$USER_NAME" -v password="$POSTGRES_PASSWORD" -v database="$DATABASE" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"owner";
SQL
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -p "$PORT" -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}"
