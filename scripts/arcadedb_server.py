#!/usr/bin/env python3
"""Run one ArcadeDB server with its Bolt (Neo4j wire protocol) plugin.

ArcadeDB from PyPI (`arcadedb-embedded`, which bundles its own Java) is the
real Bolt server that stands in for Neo4j in continuity's tests and demo (no
Neo4j server can be installed on our machines). This script starts one
instance on loopback and keeps it running until it is killed (SIGKILL from the
test harness, SIGTERM/SIGINT from a shell).

    scripts/arcadedb_server.py --bolt-port 17687 --http-port 12480 \
        --root-password continuity-test --data /tmp/arcade1

Credentials: Bolt clients log in as user `root` with the `--root-password`
given here (basic auth). ArcadeDB refuses to start without a root password
when it cannot ask for one on a terminal, and wants at least 8 characters.

A database named `--database` (default `neo4j`, the name Neo4j drivers use
when none is given) is created at start if it does not exist, so that a Bolt
client can run queries without any set-up of its own.

Once the server is up the script prints `READY bolt=PORT http=PORT` on stdout
(flushed), which a caller may wait for instead of polling the port.
"""

import argparse
import os
import signal
import sys
import threading


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bolt-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--root-password", required=True)
    parser.add_argument("--data", required=True, help="root directory for databases and logs")
    parser.add_argument(
        "--database", default="neo4j", help="database created at start ('' for none)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--heap", default="512m", help="JVM max heap (the package defaults to 4g)")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if len(args.root_password) < 8:
        print("arcadedb_server: --root-password needs at least 8 characters", file=sys.stderr)
        return 2

    data = os.path.abspath(args.data)
    os.makedirs(data, exist_ok=True)
    # ArcadeDB writes its application log to ./log relative to the working
    # directory, whatever the root path: keep it inside the data directory.
    os.chdir(data)

    # Imported late: the import is slow (it loads JPype) and --help should not pay.
    from arcadedb_embedded.jvm import start_jvm
    from arcadedb_embedded.server import ArcadeDBServer

    start_jvm(heap_size=args.heap)
    server = ArcadeDBServer(
        root_path=os.path.join(data, "databases"),
        root_password=args.root_password,
        config={
            "host": args.host,
            "http_port": args.http_port,
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "bolt_port": args.bolt_port,
        },
    )
    server.start()
    if args.database:
        server.create_database(args.database)
    print(f"\nREADY bolt={args.bolt_port} http={args.http_port}", flush=True)

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
