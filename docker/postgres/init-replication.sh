#!/usr/bin/env bash
# Runs once, when the official postgres image initializes an empty data
# directory (/docker-entrypoint-initdb.d): a `replicator` role for the
# streaming standby of the redundancy profile (standby-entrypoint.sh), and a
# pg_hba.conf line that lets it in over the compose network with SCRAM.
set -euo pipefail

if [ -z "${REPLICATION_PASSWORD:-}" ]; then
    echo "init-replication: REPLICATION_PASSWORD is empty: no replicator role" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v pw="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL

echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
