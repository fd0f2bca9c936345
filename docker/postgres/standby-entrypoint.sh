#!/usr/bin/env bash
# Entry point of postgres-standby (redundancy profile), run as the postgres
# user: on the first start, clone the primary with pg_basebackup -R (which
# writes standby.signal and primary_conninfo), then run postgres as a hot
# standby. Later starts reuse the data directory (a promoted standby stays
# promoted: re-cloning is a deliberate step, docs/runbook.md).
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PRIMARY_HOST:=postgres}"
: "${PRIMARY_PORT:=5432}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is required}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "standby: cloning $PRIMARY_HOST into $PGDATA" >&2
    # The image's data directory is mode 1777; pg_basebackup needs it empty.
    find "$PGDATA" -mindepth 1 -delete
    PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup \
        --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username=replicator \
        --pgdata="$PGDATA" --write-recovery-conf --wal-method=stream \
        --checkpoint=fast --progress
    chmod 0700 "$PGDATA"
fi

exec postgres -c hot_standby=on "$@"
