#!/usr/bin/env python3
"""Container health: exit 0 when grpc.health.v1 says SERVING for the whole server, else 1.

Installed in the server image as `neural-attn-healthcheck` (the Dockerfile's HEALTHCHECK). It
reads the server's own settings from the environment, so it follows them:

  NEURAL_ATTN_PORT          the gRPC port (default 50051)
  NEURAL_ATTN_TLS_CERT      when set, the probe speaks TLS and trusts this certificate (or
                            NEURAL_ATTN_HEALTHCHECK_CA, the CA that signed it)
  NEURAL_ATTN_HEALTHCHECK_NAME  the name the certificate is checked against (default localhost)
  NEURAL_ATTN_TLS_CLIENT_CA with mutual TLS the probe presents NEURAL_ATTN_TLS_CERT/KEY as its
                            client certificate (so that CA must have signed the server's cert)

Health answers without a token. During a drain the server says NOT_SERVING, so the probe fails
and orchestrators stop sending new work there.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = os.environ
    target = f"127.0.0.1:{env.get('NEURAL_ATTN_PORT', '50051')}"
    cert = env.get("NEURAL_ATTN_TLS_CERT")
    if cert:

        def read(path: str | None) -> bytes | None:
            return open(path, "rb").read() if path else None

        client = env.get("NEURAL_ATTN_TLS_CLIENT_CA")
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(env.get("NEURAL_ATTN_HEALTHCHECK_CA") or cert),
            private_key=read(env.get("NEURAL_ATTN_TLS_KEY")) if client else None,
            certificate_chain=read(cert) if client else None,
        )
        name = env.get("NEURAL_ATTN_HEALTHCHECK_NAME", "localhost")
        channel = grpc.secure_channel(target, creds, [("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=4
        )
    except grpc.RpcError as exc:
        print(f"health check failed: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
