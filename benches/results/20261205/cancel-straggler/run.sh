#!/bin/bash
# usage: run.sh BIN LABEL REPS
BIN=$1; LABEL=$2; REPS=${3:-3}
PM=$(head -1 /tmp/pgx/postmaster.pid)
rm -rf /tmp/cxp/data
RUST_LOG=warn $BIN run --config $(dirname $0)/continuity.toml > /tmp/cxp/$LABEL.log 2>&1 &
CP=$!
sleep 3
strace -f -e trace=kill -e inject=kill:delay_enter=300000:when=2 -p $PM -o /tmp/cxp/$LABEL.st 2>/dev/null &
ST=$!
sleep 1
for i in $(seq 1 $REPS); do python3 $(dirname $0)/client.py 39982 "SELECT pg_sleep(2)"; done
kill $ST; sleep 0.3; kill $CP; wait $CP 2>/dev/null
