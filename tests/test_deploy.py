"""No Docker engine runs here: the deployment files are parsed and checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid_and_wires_envoy_to_the_replicas():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    app = services["neural-attn"]
    assert (ROOT / app["build"]["context"] / app["build"]["dockerfile"]).is_file()
    port = int(app["command"][app["command"].index("--port") + 1])
    assert str(port) in [str(p) for p in app["expose"]]
    assert app["deploy"]["replicas"] >= 2
    gpu = app["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    envoy = services["envoy"]
    host_config = envoy["volumes"][0].split(":")[0]
    config = yaml.safe_load((ROOT / host_config).read_text())
    cluster = config["static_resources"]["clusters"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "neural-attn", "port_value": port}
    assert "http2_protocol_options" in str(cluster)  # gRPC needs HTTP/2 upstream
    assert "grpc_health_check" in cluster["health_checks"][0]


def test_dockerfile_copies_every_package_and_runs_the_server():
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    for folder in ("neural_attn", "dsl", "backends", "server", "client", "pyproject.toml"):
        assert folder in copied, folder
        assert (ROOT / folder).exists()
    assert re.search(r'^ENTRYPOINT \["neural-attn-server"\]', dockerfile, re.M)
    assert "torch==2.13.0" in dockerfile
    assert 'pip install ".[service]"' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "grpc_health" in dockerfile
