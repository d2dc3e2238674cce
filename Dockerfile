# The neural-attn server image. CPU by default; for a GPU box build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#                --build-arg TF_PACKAGE=tensorflow[and-cuda]==2.21.0 -t neural-attn:gpu .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TF_PACKAGE=tensorflow-cpu==2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0 && pip install "${TF_PACKAGE}"
COPY pyproject.toml README.md ./
COPY neural_attn ./neural_attn
COPY dsl ./dsl
COPY backends ./backends
COPY server ./server
COPY client ./client
RUN pip install ".[service]"

RUN useradd --create-home --uid 10001 attn
USER attn
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')); \
sys.exit(0 if s.Check(h.HealthCheckRequest(), timeout=4).status == 1 else 1)"
ENTRYPOINT ["neural-attn-server"]
CMD ["--host", "0.0.0.0", "--port", "50051"]
