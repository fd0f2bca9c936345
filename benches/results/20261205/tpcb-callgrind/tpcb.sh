#!/bin/bash
# callgrind: instructions per TPC-B transaction through a multiplexed postgres service.
# usage: tpcb.sh BIN LABEL
set -e
BIN=$1; L=$2; N=$3; W=/tmp/cg/$L; rm -rf $W; mkdir -p $W
PGBIN=/usr/lib/postgresql/15/bin
PG=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
CP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
CC=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p $W/pg && chown postgres:postgres $W/pg && chmod 700 $W/pg
(cd / && runuser -u postgres -- $PGBIN/initdb -D $W/pg -U postgres --auth=trust -E UTF8 --no-locale >/dev/null)
(cd / && runuser -u postgres -- $PGBIN/pg_ctl -D $W/pg -l $W/pg/server.log -w -o "-p $PG -c listen_addresses=127.0.0.1 -c unix_socket_directories=$W/pg -c fsync=off" start >/dev/null)
trap "cd / && runuser -u postgres -- $PGBIN/pg_ctl -D $W/pg -m immediate stop >/dev/null 2>&1; kill \$CPID 2>/dev/null" EXIT
psql -h 127.0.0.1 -p $PG -U postgres -c "create database bench" >/dev/null
pgbench -h 127.0.0.1 -p $PG -U postgres -i -s 1 -q bench >/dev/null 2>&1
cat > $W/c.toml <<EOT
data_dir = "$W/data"
[control]
listen = "127.0.0.1:$CC"
[health]
check_interval_seconds = 1
[[service]]
name = "postgres-mux"
kind = "postgres"
listen = "127.0.0.1:$CP"
multiplex = true
upstreams = [ { name = "pg", address = "127.0.0.1:$PG", role = "primary", user = "postgres", database = "bench" } ]
EOT
valgrind --tool=callgrind --callgrind-out-file=$W/cg.out $BIN run --config $W/c.toml > $W/c.log 2>&1 &
CPID=$!
for i in $(seq 1 120); do pgbench -h 127.0.0.1 -p $CP -U postgres -S -t 1 bench >/dev/null 2>&1 && break; sleep 0.5; done
pgbench -h 127.0.0.1 -p $CP -U postgres -c 4 -t 50 bench > /dev/null 2>&1
pgbench -h 127.0.0.1 -p $CP -U postgres -c 4 -t $((N/4)) bench > $W/pgbench.txt 2>&1
kill -INT $CPID; wait $CPID || true
T=$(grep -m1 "Collected" $W/c.log | awk '{print $NF}')
echo "$L N=$N instructions $T"
