# neural-attn images: the server (default target) and a slim client (`--target client`).
#
#   CPU server (any machine):
#     docker build -t neural-attn:cpu .
#   GPU server (CUDA builds of both frameworks; run with the NVIDIA container toolkit):
#     docker build -t neural-attn:gpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       --build-arg TF_PACKAGE='tensorflow[and-cuda]==2.21.0' .
#   Client only (the CLI; no PyTorch, TensorFlow or lark):
#     docker build --target client -t neural-attn-client .
#
# Where the wheels come from (pick what the builder can reach):
#   - TORCH_INDEX: the index torch is taken from. The default is PyTorch's CPU index; PyPI's own
#     Linux torch wheel is a CUDA build of several GB. Empty: torch from the default index.
#   - PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_CERT... (build args, read by pip): a mirror.
#   - deploy/wheels/: a local wheel directory, always preferred (`--find-links`); with
#     --build-arg WHEELS_ONLY=1 nothing else is used and the build needs no network at all.
#     `make compose-smoke` fills it from the host (deploy/compose-smoke.sh).
#
# Needs BuildKit (Docker 20.10+ with DOCKER_BUILDKIT=1, or docker buildx; the default since
# Docker 23): the wheels and sources are bind-mounted into the RUN steps, never copied into a
# layer of their own. The final images hold one virtual environment and nothing else of the build: no pip
# cache, no wheels, no compilers, no grpcio-tools.
#
# BASE_IMAGE must provide python3 (3.11 or newer) with its venv module, and useradd:
# python:3.11-slim does; so does Debian bookworm with python3-venv (the smoke test's local base).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

# The wire stubs are generated here from protos/ with the grpcio-tools the repository pins (the
# committed ones are excluded by .dockerignore, so what runs is what the build generated).
FROM base AS source
ARG WHEELS_ONLY=0
ARG GRPCIO_TOOLS=grpcio-tools==1.85.1
# One layer: the sources, from a bind mount of the context (.dockerignore keeps it to these),
# and the stubs generated from them.
RUN --mount=type=bind,target=/ctx \
    set -eu; \
    if [ "$WHEELS_ONLY" = 1 ]; then set -- --no-index --find-links /ctx/deploy/wheels; \
    else set -- --find-links /ctx/deploy/wheels; fi; \
    mkdir /src; \
    cd /ctx && cp -r pyproject.toml README.md protos neural_attn dsl backends server client /src/; \
    cd /src; \
    python3 -m venv /tmp/tools; \
    /tmp/tools/bin/pip install -q "$@" "$GRPCIO_TOOLS"; \
    /tmp/tools/bin/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. \
        --grpc_python_out=. protos/neural_attn/v1/attention.proto; \
    test -s neural_attn/v1/attention_pb2_grpc.py; \
    rm -rf /tmp/tools

# --- the client: the thin install (numpy, grpcio, matplotlib, plotly) and the CLI -------------
FROM base AS client-build
ARG WHEELS_ONLY=0
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    --mount=type=bind,from=source,source=/src,target=/src,rw \
    set -eu; \
    if [ "$WHEELS_ONLY" = 1 ]; then set -- --no-index --find-links /wheels; \
    else set -- --find-links /wheels; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -q "$@" /src; \
    if /opt/venv/bin/python -c "import torch" 2>/dev/null \
        || /opt/venv/bin/python -c "import tensorflow" 2>/dev/null; then \
        echo "the client image must not carry a framework" >&2; exit 1; fi; \
    /opt/venv/bin/neural-attn-client --help >/dev/null

FROM base AS client
RUN useradd --create-home --uid 10001 --user-group attn
COPY --from=client-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
ENTRYPOINT ["neural-attn-client"]
CMD ["--help"]

# --- the server: both frameworks, the service extras ------------------------------------------
FROM base AS server-build
ARG WHEELS_ONLY=0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_PACKAGE=torch==2.13.0
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
# The frameworks and every dependency first, from pyproject.toml alone, so that a change to the
# sources reinstalls only the project. torch comes alone from its index (which also serves its
# dependencies), then TensorFlow and the rest.
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    set -eu; \
    if [ "$WHEELS_ONLY" = 1 ]; then set -- --no-index --find-links /wheels; \
    else set -- --find-links /wheels; fi; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install -q "$@" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_PACKAGE"; \
    python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; \
print("\n".join(d for d in p["dependencies"] + p["optional-dependencies"]["service"] \
if not d.startswith(p["name"])))' > /tmp/requirements.txt; \
    /opt/venv/bin/pip install -q "$@" "$TF_PACKAGE" -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    --mount=type=bind,from=source,source=/src,target=/src,rw \
    --mount=type=bind,source=deploy/healthcheck.py,target=/tmp/healthcheck.py \
    set -eu; \
    if [ "$WHEELS_ONLY" = 1 ]; then set -- --no-index --find-links /wheels; \
    else set -- --find-links /wheels; fi; \
    /opt/venv/bin/pip install -q "$@" --no-deps "/src[service]"; \
    /opt/venv/bin/pip check; \
    install -m 0755 /tmp/healthcheck.py /opt/venv/bin/neural-attn-healthcheck; \
    /opt/venv/bin/python -c "import torch, tensorflow, neural_attn.server.app"; \
    /opt/venv/bin/neural-attn-server --help >/dev/null

# The default target. On copy-based storage drivers (vfs) every layer holds the whole tree, so
# the final stages have two: the user, then the venv (no WORKDIR: the process needs no cwd).
FROM base AS server
RUN useradd --create-home --uid 10001 --user-group attn \
    && mkdir -p /weights && chown 10001:10001 /weights
COPY --from=server-build /opt/venv /opt/venv
# In a container the published port is the boundary (compose publishes on 127.0.0.1 unless
# told otherwise), so the server binds every interface of its own network namespace.
ENV PATH=/opt/venv/bin:$PATH \
    NEURAL_ATTN_HOST=0.0.0.0 \
    NEURAL_ATTN_PORT=50051 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 50051 9090
# grpc.health.v1 on NEURAL_ATTN_PORT (TLS when NEURAL_ATTN_TLS_CERT is set); health needs no token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["neural-attn-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["neural-attn-server"]
