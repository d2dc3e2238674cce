#!/usr/bin/env bash
# `make compose-smoke`: the CPU image built, started by docker-compose, used from the host, drained.
#
#  1. a Docker engine: the one $DOCKER_HOST (or the default socket) answers, else our own dockerd
#     (vfs storage, no bridge, its own socket, data root and exec root under $SMOKE_DIR)
#  2. a base image: $SMOKE_BASE_IMAGE, else python:3.11-slim if it can be pulled, else Debian
#     bookworm debootstrapped here and imported (cached in the engine between runs)
#  3. the wheels: downloaded by the host's pip into deploy/wheels (its cache makes this quick),
#     so the image builds with no network (WHEELS_ONLY=1)
#  4. the server image (default target) and the client image (--target client), timed and sized
#  5. docker-compose up of docker-compose.yml's host-network service (+ deploy/compose.smoke.yml:
#     CPU, no restart, frequent probes) on free loopback ports; waits for the HEALTHCHECK
#  6. from the host, through the client: `neural-attn-client visualize basic_transformer.neural
#     --attention --server 127.0.0.1:PORT`; the outputs are checked, and the attention equals an
#     embedded (in-process) run's; /metrics counts the calls
#  7. SIGTERM under an open stream: NOT_SERVING, new calls UNAVAILABLE, the stream completes,
#     exit code 0 (deploy/smoke_drain.py)
#  8. teardown on any exit: docker-compose down, and our dockerd stopped by its pid
#
# Disk: the engine this script starts stores images with vfs (no overlay here), where every
# layer is a full copy: a run needs about 20 GB free under SMOKE_DIR and checks for it first.
# Our engine's data is deleted at the end unless SMOKE_KEEP_CACHE=1 (then a rerun reuses the
# base image and the framework layers; `docker builder prune` bounds what it keeps). On an
# engine that was already running, only this run's containers go; images stay.
#
# Environment: SMOKE_DIR (default /tmp/neural-attn-smoke), SMOKE_BASE_IMAGE, SMOKE_KEEP=1
# (leave the stack and our engine running), SMOKE_KEEP_CACHE=1, SMOKE_MIN_FREE_GB (default 20),
# SMOKE_PYTHON (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE_DIR=${SMOKE_DIR:-/tmp/neural-attn-smoke}
PY=${SMOKE_PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")
PROJECT=neural-attn-smoke
IMAGE=neural-attn:smoke
CLIENT_IMAGE=neural-attn-client:smoke
MODEL=examples/attention_examples/basic_transformer.neural
SERVICE=neural-attn-host  # docker-compose.yml's host-network profile: this engine has no bridge
T0=$(date +%s)

say() { printf '== %s [%3ds] %s\n' "$(date +%T)" "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf 'compose-smoke: FAIL %s\n' "$*" >&2; exit 1; }

for tool in docker-compose "$PY"; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install docker-compose; make setup)"
done
mkdir -p "$SMOKE_DIR"
free_gb=$(df -Pk "$SMOKE_DIR" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "${SMOKE_MIN_FREE_GB:-20}" ]; then
  die "only $free_gb GB free under $SMOKE_DIR; the images need about ${SMOKE_MIN_FREE_GB:-20} GB (vfs copies every layer)"
fi
WORK=$(mktemp -d "$SMOKE_DIR/run.XXXXXX")
OWN_DOCKERD_PID=

cleanup() {
  local rc=$?
  set +e
  if [ -n "${COMPOSE_UP:-}" ] && [ "${SMOKE_KEEP:-0}" != 1 ]; then
    say "teardown: docker-compose down"
    compose down --volumes --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$OWN_DOCKERD_PID" ] && [ "${SMOKE_KEEP:-0}" != 1 ]; then
    say "teardown: stopping the dockerd this run started (pid $OWN_DOCKERD_PID)"
    kill -TERM "$OWN_DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$OWN_DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$OWN_DOCKERD_PID" 2>/dev/null && kill -KILL "$OWN_DOCKERD_PID"
    # what the engine may leave mounted under its exec root (its network namespace)
    grep -o " $SMOKE_DIR/engine/exec[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount 2>/dev/null
    if [ "${SMOKE_KEEP_CACHE:-0}" = 1 ]; then
      say "teardown: engine cache kept in $SMOKE_DIR/engine ($(du -sh "$SMOKE_DIR/engine" 2>/dev/null | cut -f1))"
    else
      say "teardown: deleting the engine's data ($(du -sh "$SMOKE_DIR/engine" 2>/dev/null | cut -f1); SMOKE_KEEP_CACHE=1 keeps it)"
      rm -rf "$SMOKE_DIR/engine"
    fi
  elif [ -n "${DOCKER:-}" ] && [ "${SMOKE_KEEP:-0}" != 1 ]; then
    "$DOCKER" image prune -f >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  if [ "$rc" = 0 ]; then say "compose-smoke: PASS"; else say "compose-smoke: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. an engine ------------------------------------------------------------------------------
# The CLI: one that builds with BuildKit (docker buildx, or a pre-23 CLI with DOCKER_BUILDKIT=1).
DOCKER=
for cli in $(command -v -a docker 2>/dev/null) /usr/bin/docker; do
  [ -x "$cli" ] || continue
  if "$cli" buildx version >/dev/null 2>&1; then DOCKER=$cli; BUILD=("$cli" buildx build --load); break; fi
  major=$("$cli" --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
  if [ -n "$major" ] && [ "$major" -lt 23 ]; then DOCKER=$cli; BUILD=("$cli" build); break; fi
done
[ -n "$DOCKER" ] || die "no docker CLI that builds with BuildKit (install docker.io or docker-buildx)"
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1

if "$DOCKER" info >/dev/null 2>&1; then
  say "engine: the one that answers at ${DOCKER_HOST:-the default socket}"
else
  command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed (apt-get install docker.io)"
  mkdir -p "$SMOKE_DIR/engine/data" "$SMOKE_DIR/engine/exec"
  export DOCKER_HOST="unix://$SMOKE_DIR/engine/docker.sock"
  if "$DOCKER" info >/dev/null 2>&1; then
    die "an engine left by an earlier run answers at $DOCKER_HOST: stop it first"
  fi
  say "engine: starting our own dockerd at $DOCKER_HOST (vfs storage, no bridge, host network)"
  dockerd --storage-driver vfs --iptables=false --ip-masq=false --bridge=none \
    -H "$DOCKER_HOST" --data-root "$SMOKE_DIR/engine/data" --exec-root "$SMOKE_DIR/engine/exec" \
    --pidfile "$SMOKE_DIR/engine/dockerd.pid" >"$SMOKE_DIR/engine/dockerd.log" 2>&1 &
  OWN_DOCKERD_PID=$!
  for _ in $(seq 120); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$OWN_DOCKERD_PID" 2>/dev/null || { tail -20 "$SMOKE_DIR/engine/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
fi
compose() {
  docker-compose -p "$PROJECT" -f docker-compose.yml -f deploy/compose.smoke.yml \
    --profile host-network "$@"
}

# --- 2. a base image ---------------------------------------------------------------------------
BASE=${SMOKE_BASE_IMAGE:-}
if [ -z "$BASE" ]; then
  if "$DOCKER" image inspect python:3.11-slim >/dev/null 2>&1 \
      || timeout 60 "$DOCKER" pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE=python:3.11-slim
  else
    BASE=neural-attn-base:bookworm
    if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || die "the Docker hub is unreachable and debootstrap is missing (apt-get install debootstrap)"
      say "base: the Docker hub is unreachable: debootstrapping Debian bookworm (python3, venv)"
      rootfs="$WORK/rootfs"
      mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
      rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
      tar -C "$rootfs" -c . | "$DOCKER" import -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
      rm -rf "$rootfs"
    fi
  fi
fi
say "base: $BASE"

# --- 3. wheels ---------------------------------------------------------------------------------
say "wheels: the host's pip fills deploy/wheels (CPU torch, tensorflow-cpu, the service's deps)"
"$BIN/pip" download -q -d deploy/wheels --disable-pip-version-check \
  'torch==2.13.0+cpu' 'tensorflow-cpu==2.21.0' 'grpcio-tools==1.85.1' 'setuptools>=69' wheel \
  '.[service]' >"$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log" >&2; die "pip download failed"; }
rm -f deploy/wheels/neural_attn-* deploy/wheels/neural-attn-*
say "wheels: $(find deploy/wheels -name '*.whl' | wc -l) wheels, $(du -sh deploy/wheels | cut -f1)"

if [ -n "$OWN_DOCKERD_PID" ]; then  # a kept cache: only what the next build can use
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
  "$DOCKER" builder prune -f --keep-storage 12GB >/dev/null 2>&1 || true
fi

# --- 4. images ---------------------------------------------------------------------------------
build() {  # tag, extra args...
  local tag=$1 start; shift
  start=$(date +%s)
  "${BUILD[@]}" --network host --progress plain -t "$tag" \
    --build-arg BASE_IMAGE="$BASE" --build-arg WHEELS_ONLY=1 \
    --build-arg TORCH_PACKAGE='torch==2.13.0+cpu' "$@" . >"$WORK/build-$tag.log" 2>&1 \
    || { tail -40 "$WORK/build-$tag.log" >&2; die "docker build of $tag failed"; }
  say "image $tag: built in $(( $(date +%s) - start )) s, $("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
}
build "$IMAGE"
build "$CLIENT_IMAGE" --target client
"$DOCKER" run --rm --network none "$CLIENT_IMAGE" --help >/dev/null || die "the client image's CLI does not run"
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || die "the server image runs as root"

# --- 5. compose up -----------------------------------------------------------------------------
read -r SMOKE_PORT SMOKE_METRICS_PORT < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
export NEURAL_ATTN_PUBLISH_PORT=$SMOKE_PORT NEURAL_ATTN_METRICS_PUBLISH_PORT=$SMOKE_METRICS_PORT
export NEURAL_ATTN_IMAGE=$IMAGE
export NEURAL_ATTN_WEIGHTS_HOST_DIR="$WORK/weights"
mkdir -p "$NEURAL_ATTN_WEIGHTS_HOST_DIR"
compose config -q || die "docker-compose config refused the smoke configuration"
COMPOSE_UP=1
compose up -d --no-build "$SERVICE" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "docker-compose up failed"; }
CID=$(compose ps -q "$SERVICE")
[ -n "$CID" ] || die "no container for $SERVICE"
say "compose: up (container ${CID:0:12}, gRPC 127.0.0.1:$SMOKE_PORT, metrics :$SMOKE_METRICS_PORT); waiting for healthy"
for _ in $(seq 200); do
  health=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$CID")
  state=$("$DOCKER" inspect -f '{{.State.Status}}' "$CID")
  [ "$health" = healthy ] && break
  if [ "$state" != running ] || [ "$health" = unhealthy ]; then
    "$DOCKER" logs --tail 40 "$CID" >&2; die "the server is $state/$health"
  fi
  sleep 1.5
done
[ "$health" = healthy ] || { "$DOCKER" logs --tail 40 "$CID" >&2; die "not healthy within 300 s"; }
say "compose: healthy after $(( $(date +%s) - $("$PY" -c "import sys, datetime; print(int(datetime.datetime.fromisoformat(sys.argv[1][:26]).replace(tzinfo=datetime.timezone.utc).timestamp()))" "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$CID")") )) s from container start"

# A look inside the running container (a container of its own costs a 2.7 GB copy on vfs).
"$DOCKER" exec "$CID" sh -c '
  set -e
  for d in /root/.cache/pip /home/attn/.cache/pip /wheels /tmp/tools /src; do
    if [ -e "$d" ]; then echo "the image holds $d" >&2; exit 1; fi
  done
  python -c "import neural_attn.v1.attention_pb2_grpc"
  test "$(id -u)" != 0
  if touch /opt/venv/.written 2>/dev/null; then echo "the root filesystem is writable" >&2; exit 1; fi
  touch /tmp/.written' || die "the server image holds build leftovers, lacks its stubs, runs as root or writes its root filesystem"
say "image: runs as $user, read-only root, no pip cache, wheels or sources left, stubs generated in the build"

# --- 6. the example visualization through the client ------------------------------------------
OUT="$WORK/served"
start=$(date +%s)
"$BIN/neural-attn-client" visualize "$MODEL" --attention --server "127.0.0.1:$SMOKE_PORT" \
  --output-dir "$OUT" >"$WORK/visualize.log" 2>&1 \
  || { cat "$WORK/visualize.log" >&2; "$DOCKER" logs --tail 40 "$CID" >&2; die "visualize against the container failed"; }
say "client: visualize against the container took $(( $(date +%s) - start )) s"
tr '\r' '\n' <"$WORK/visualize.log" | grep -v -e 'attention for display' -e '^ *$' | sed 's/^/   | /' | head -30
"$BIN/neural-attn-client" visualize "$MODEL" --attention --quiet --output-dir "$WORK/embedded" \
  >"$WORK/embedded.log" 2>&1 || { cat "$WORK/embedded.log" >&2; die "the embedded reference run failed"; }
"$PY" - "$OUT" "$WORK/embedded" <<'EOF' || die "the outputs are wrong"
import json, sys
from pathlib import Path
import numpy as np
served, embedded = Path(sys.argv[1]), Path(sys.argv[2])
want = ["attention_heatmap.png", "attention_heads_transformer_encoder_0.png",
        "attention_interactive.html", "attention_weights.npz", "attention_rollout.npy",
        "analysis.json"]
missing = [n for n in want if not (served / n).is_file() or (served / n).stat().st_size == 0]
assert not missing, f"missing outputs: {missing}"
assert list(served.glob("compiled_model_*.py")), "no generated code"
for png in served.glob("*.png"):
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
a = np.load(served / "attention_weights.npz")
b = np.load(embedded / "attention_weights.npz")
assert sorted(a.files) == sorted(b.files) == ["transformer_encoder_0"], a.files
att = a["transformer_encoder_0"]
assert att.shape == (1, 4, 50, 50), att.shape
assert np.allclose(att.sum(-1), 1, atol=1e-5), "rows do not sum to 1"
diff = float(np.abs(att - b["transformer_encoder_0"]).max())
assert diff <= 1e-6, f"served attention differs from the embedded run's by {diff}"
json.loads((served / "analysis.json").read_text())
print(f"   outputs: {len(list(served.iterdir()))} files; attention {att.shape} equals the "
      f"embedded run's (max |diff| {diff:.1e}); rows sum to 1")
EOF
# The slim client image does the same from a container (host network, the image's own user).
mkdir -m 0777 "$WORK/client-image"
"$DOCKER" run --rm --network host -v "$ROOT/examples:/examples:ro" -v "$WORK/client-image:/out" \
  "$CLIENT_IMAGE" visualize "/$MODEL" --attention --quiet --server "127.0.0.1:$SMOKE_PORT" \
  --output-dir /out >"$WORK/client-image.log" 2>&1 \
  || { cat "$WORK/client-image.log" >&2; die "the client image could not visualize against the server"; }
"$PY" - "$OUT" "$WORK/client-image" <<'EOF' || die "the client image's outputs differ"
import sys
from pathlib import Path
import numpy as np
a, b = (np.load(Path(d) / "attention_weights.npz") for d in sys.argv[1:])
assert sorted(a.files) == sorted(b.files) and all((a[k] == b[k]).all() for k in a.files)
assert (Path(sys.argv[2]) / "attention_interactive.html").stat().st_size > 0
EOF
say "client image: the same visualization from $CLIENT_IMAGE, identical attention"
metrics=$("$PY" -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())" \
  "http://127.0.0.1:$SMOKE_METRICS_PORT/metrics") || die "no /metrics on :$SMOKE_METRICS_PORT"
calls=$(printf '%s\n' "$metrics" | grep -E '^neural_attn_requests_total\{' || true)
[ -n "$calls" ] || die "/metrics has no neural_attn_requests_total"
say "metrics: $(printf '%s\n' "$calls" | sed -E 's/^neural_attn_requests_total//' | tr '\n' ' ')"

# --- 7. SIGTERM and the drain ------------------------------------------------------------------
start=$(date +%s)
"$PY" deploy/smoke_drain.py --server "127.0.0.1:$SMOKE_PORT" \
  --model examples/attention_examples/multi_layer_transformer.neural \
  --signal-command "$DOCKER kill -s SIGTERM $CID" || { "$DOCKER" logs --tail 40 "$CID" >&2; die "the drain check failed"; }
code=$(timeout 60 "$DOCKER" wait "$CID") || die "the server did not exit within 60 s of SIGTERM"
took=$(( $(date +%s) - start ))
"$DOCKER" logs "$CID" >"$WORK/server.log" 2>&1
[ "$code" = 0 ] || { tail -30 "$WORK/server.log" >&2; die "the server exited $code after SIGTERM (not a clean drain)"; }
say "drain: exit code 0, ${took} s from SIGTERM to exit (grace 30 s, stop_grace_period 45 s)"
grep -iE 'drain|sigterm|stopp|shut' "$WORK/server.log" | tail -5 | cut -c1-200 | sed 's/^/   | /' || true
