#!/bin/bash
# perf_p16.sh BIN OUT [mode]  mode: perf|cpu
BIN=$1; OUT=$2; MODE=${3:-perf}; W=/tmp/pp16; rm -rf $W; mkdir -p $W
fp(){ python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(fp); CP=$(fp); CC=$(fp)
redis-server --port $RP --save '' --appendonly no --daemonize no > $W/redis.log 2>&1 & RPID=$!
cat > $W/c.toml <<EOT
data_dir = "$W/data"
[control]
listen = "127.0.0.1:$CC"
[[service]]
name = "redis-mux"
kind = "redis"
listen = "127.0.0.1:$CP"
multiplex = true
upstreams = [ { name = "r", address = "127.0.0.1:$RP", role = "primary" } ]
EOT
$BIN run --config $W/c.toml > $W/c.log 2>&1 & CPID=$!
for i in $(seq 1 60); do redis-cli -p $CP ping >/dev/null 2>&1 && break; sleep 0.3; done
redis-benchmark -p $CP -c 50 -P 16 -n 300000 -t get -q >/dev/null
if [ $MODE = perf ]; then
 perf record -e cpu-clock -g -p $CPID -o $OUT.data -- sleep 8 >/dev/null 2>&1 &
 PP=$!
fi
S0=$(awk '{print $14+$15}' /proc/$CPID/stat)
redis-benchmark -p $CP -c 50 -P 16 -n 2000000 -t set,get -q
S1=$(awk '{print $14+$15}' /proc/$CPID/stat)
echo "proxy ticks $((S1-S0)) for 4000000 ops: $(python3 -c "print(($S1-$S0)*10000/4e6,'us/op')")"
[ $MODE = perf ] && wait $PP
kill $CPID $RPID; wait 2>/dev/null
