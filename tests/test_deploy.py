"""The deployment files, checked against the code they deploy, without a Docker engine.

`docker-compose config` (when installed) validates every compose profile; the Kubernetes
manifests validate against the API schemas offline (kubernetes-validate); every NEURAL_ATTN_*
variable they set goes through the server's own settings parser and comes out as meant. The
images themselves are built and run by `make compose-smoke` (deploy/compose-smoke.sh).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
COMPOSE_SMOKE = ROOT / "deploy" / "compose.smoke.yml"
K8S = ROOT / "deploy" / "k8s"
SERVER_SERVICES = ("neural-attn", "neural-attn-host", "neural-attn-pool")

# (files, profiles): every way the README tells to run compose.
COMPOSE_VARIANTS = [
    ((COMPOSE,), ()),
    ((COMPOSE,), ("host-network",)),
    ((COMPOSE,), ("envoy",)),
    ((COMPOSE, COMPOSE_GPU), ()),
    ((COMPOSE, COMPOSE_GPU), ("envoy", "host-network")),
    ((COMPOSE, COMPOSE_SMOKE), ("host-network",)),
]


def _clean_env() -> dict[str, str]:
    """The environment without NEURAL_ATTN_* (so compose's own defaults are what is checked)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_ATTN_")}


def _merge(base: Any, over: Any) -> Any:
    """Compose's override merge, enough for these files: mappings merge, the rest is replaced
    (ports and volumes are appended, as compose does)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if key in ("ports", "volumes", "expose") and key in out:
                out[key] = list(out[key]) + [v for v in value if v not in out[key]]
            else:
                out[key] = _merge(out.get(key), value) if key in out else value
        return out
    return over


_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items() if not str(k).startswith("x-")}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), node)
    return node


def _resolved(files: tuple[Path, ...], env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose configuration as the engine would see it, parsed here (no docker-compose)."""
    merged: dict[str, Any] = {}
    for f in files:
        merged = _merge(merged, yaml.safe_load(f.read_text()))
    return _interpolate(merged, {} if env is None else env)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _server_settings(environ: dict[str, str]) -> tuple[Any, Any]:
    from neural_attn.server.main import parse_settings

    config, run, _notes = parse_settings([], environ)
    return config, run


def _known_variables() -> set[str]:
    """Every NEURAL_ATTN_* variable the server reads, from its own list of settings."""
    from neural_attn.server.main import TOKEN_FILE_ENV, settings

    return {s.env for s in settings()} | {TOKEN_FILE_ENV}


# --- the Dockerfile -------------------------------------------------------------------------


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Instruction lines (continuations joined) of each named stage, in order."""
    text = re.sub(r"\\\n", " ", dockerfile)
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = stages.setdefault(m.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def test_dockerfile_builds_server_and_client_from_any_base_without_leftovers():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    stages = _stages(text)
    assert list(stages)[-1] == "server", "the server must be the default (last) target"
    for name in ("server", "client"):
        final = stages[name]
        # the final images take only the built virtual environment from the build stages
        froms = [line for line in final if "--from=" in line]
        assert froms == [f"COPY --from={name}-build /opt/venv /opt/venv"], froms
        user = next(line for line in final if line.startswith("USER "))
        assert user.split()[1].split(":")[0] not in ("0", "root")
        assert not any(line.startswith(("RUN pip", "ADD ")) for line in final)
    server = " ".join(stages["server"])
    assert 'ENTRYPOINT ["neural-attn-server"]' in server
    assert "HEALTHCHECK" in server and '"neural-attn-healthcheck"' in server
    assert 'ENTRYPOINT ["neural-attn-client"]' in " ".join(stages["client"])
    build = " ".join(stages["server-build"])
    assert "ARG TORCH_PACKAGE=torch==2.13.0" in build
    assert "ARG TF_PACKAGE=tensorflow-cpu==2.21.0" in build
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in build
    assert '"/src[service]"' in build
    assert "PIP_NO_CACHE_DIR=1" in " ".join(stages["base"])
    # wheels and the healthcheck come in by bind mounts, never as layers
    assert "COPY deploy" not in text


def test_dockerfile_copies_every_package_folder_and_generates_the_stubs():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    source = _stages((ROOT / "Dockerfile").read_text())["source"]
    copy_line = next(line for line in " ".join(source).split(";") if "cp -r" in line)
    copied = set(copy_line.split("cp -r", 1)[1].split()[:-1])
    assert folders | {"pyproject.toml", "README.md", "protos"} <= copied, folders - copied
    generate = next(line for line in source if "grpc_tools.protoc" in line)
    make_proto = re.search(r"^PROTO_SRC := (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_proto and make_proto.group(1) in generate
    for flag in ("--python_out=.", "--pyi_out=.", "--grpc_python_out=.", "-Iprotos"):
        assert flag in generate
    # the same grpcio-tools as `make proto`
    pin = next(
        d for d in pyproject["project"]["optional-dependencies"]["dev"] if "grpcio-tools" in d
    )
    assert f"ARG GRPCIO_TOOLS={pin}" in source


def test_dockerignore_sends_the_sources_but_not_the_committed_stubs():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("**") if "**" in lines else -1] == "**"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in set(pyproject["tool"]["setuptools"]["package-dir"].values()) | {"protos"}:
        assert f"!{folder}/" in lines, folder
    assert "neural_attn/v1/*_pb2*.py" in lines
    assert "!deploy/healthcheck.py" in lines and "!deploy/wheels/" in lines
    assert (ROOT / "deploy" / "wheels" / ".gitignore").is_file()  # the bind mount's source exists


@pytest.fixture
def health_server():
    """A bare grpc.health.v1 server on a free loopback port; yields (port, servicer)."""
    grpc = pytest.importorskip("grpc")
    health = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(0)


def _probe(port: int) -> subprocess.CompletedProcess[str]:
    env = _clean_env() | {"NEURAL_ATTN_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "healthcheck.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_image_healthcheck_follows_grpc_health(health_server):
    from grpc_health.v1 import health_pb2

    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    ok = _probe(port)
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # a draining server
    draining = _probe(port)
    assert draining.returncode == 1 and "NOT_SERVING" in draining.stdout, draining
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = _probe(free)
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr, down


def _tls_files(tmp_path: Path) -> dict[str, str]:
    """A CA and a server certificate for localhost it signed (no EKU: usable as a client too)."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test ca"))
        .issuer_name(name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    for kind, data in files.items():
        (tmp_path / f"{kind}.pem").write_bytes(data)
    return {kind: str(tmp_path / f"{kind}.pem") for kind in files}


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_the_image_healthcheck_speaks_tls_when_the_server_does(tmp_path, mutual):
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    pem = _tls_files(tmp_path)
    read = lambda kind: Path(pem[kind]).read_bytes()  # noqa: E731
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(read("key"), read("cert"))],
        root_certificates=read("ca") if mutual else None,
        require_client_auth=mutual,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        env = _clean_env() | {
            "NEURAL_ATTN_PORT": str(port),
            "NEURAL_ATTN_TLS_CERT": pem["cert"],
            "NEURAL_ATTN_TLS_KEY": pem["key"],
            "NEURAL_ATTN_HEALTHCHECK_CA": pem["ca"],
        }
        if mutual:
            env["NEURAL_ATTN_TLS_CLIENT_CA"] = pem["ca"]
        probe = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
        ok = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok
        # a plaintext probe cannot pass against a TLS port
        plain = {k: v for k, v in env.items() if not k.startswith("NEURAL_ATTN_TLS")}
        refused = subprocess.run(probe, env=plain, capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1, refused
    finally:
        server.stop(0)


# --- compose --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, profiles", COMPOSE_VARIANTS, ids=lambda v: "+".join(getattr(p, "name", p) for p in v)
)
def test_docker_compose_config_accepts_every_variant(files, profiles, tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    cmd = [exe, "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    for p in profiles:
        cmd += ["--profile", p]
    out = subprocess.run(
        cmd + ["config"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = config["services"]
    for name, service in services.items():
        if name in SERVER_SERVICES:
            assert service["stop_grace_period"] and service["healthcheck"]["test"]
    # the engine's view agrees with the parse the other tests check
    parsed = _resolved(files)
    for name in SERVER_SERVICES:
        if name in services:
            assert _env(services[name]) == _env(parsed["services"][name]), name


def test_every_compose_variable_is_a_server_setting_and_means_what_it_says():
    known = _known_variables()
    for files, _ in COMPOSE_VARIANTS:
        services = _resolved(files)["services"]
        for name in SERVER_SERVICES:
            env = _env(services[name])
            unknown = {k for k in env if k.startswith("NEURAL_ATTN_")} - known
            assert not unknown, f"{name} sets variables the server never reads: {unknown}"
            config, run = _server_settings(env)
            # what the server really runs with, from the compose file's own values
            assert config.weights_dir == env["NEURAL_ATTN_WEIGHTS_DIR"] == "/weights"
            assert run.port == int(env["NEURAL_ATTN_PORT"])
            assert run.metrics_port == int(env["NEURAL_ATTN_METRICS_PORT"])
            assert run.grace == float(env["NEURAL_ATTN_GRACE"])
            assert run.log_format == "json"
            assert config.device == env["NEURAL_ATTN_DEVICE"]
            assert config.auth_token is None  # the empty default means no token, not ""
            assert config.max_workers == int(env["NEURAL_ATTN_MAX_WORKERS"])
    # a token given to compose reaches the server
    env = _env(_resolved((COMPOSE,), {"NEURAL_ATTN_TOKEN": "s3cret"})["services"]["neural-attn"])
    assert _server_settings(env)[0].auth_token == "s3cret"


def test_dockerfile_env_and_healthcheck_port_are_server_settings():
    text = (ROOT / "Dockerfile").read_text()
    image_env = dict(re.findall(r"(NEURAL_ATTN_\w+)=(\S+)", text))
    assert set(image_env) <= _known_variables()
    _, run = _server_settings(image_env)
    assert run.host == "0.0.0.0" and run.port == 50051
    assert re.search(r"^EXPOSE 50051 9090$", text, re.M)
    # the probe reads the same variable the server does
    assert "NEURAL_ATTN_PORT" in (ROOT / "deploy" / "healthcheck.py").read_text()


def test_compose_defaults_are_secure_and_wired():
    from neural_attn.server.main import RunOptions

    server_grace = dataclasses.fields(RunOptions)
    default_grace = next(f.default for f in server_grace if f.name == "grace")
    for files, _ in COMPOSE_VARIANTS:
        services = _resolved(files)["services"]
        for name in SERVER_SERVICES:
            service = services[name]
            env = _env(service)
            grace = float(env.get("NEURAL_ATTN_GRACE", default_grace))
            stop = int(str(service["stop_grace_period"]).removesuffix("s"))
            assert stop >= max(grace, default_grace) + 10, (name, stop, grace)
            # the weights volume lands where the server looks, read-only
            weights = [v for v in service["volumes"] if v.split(":")[1] == "/weights"]
            assert weights and weights[0].endswith(":ro"), service["volumes"]
            assert service["healthcheck"]["test"] == ["CMD", "neural-attn-healthcheck"]
            assert service["read_only"] is True and "/tmp" in service["tmpfs"]
            assert service["cap_drop"] == ["ALL"]
            # no port on every interface without a token or TLS
            for port in service.get("ports", []):
                host_ip, _published, target = port.rsplit(":", 2)
                assert host_ip == "127.0.0.1", (name, port)
                assert target in (env["NEURAL_ATTN_PORT"], env["NEURAL_ATTN_METRICS_PORT"])
            if service.get("network_mode") == "host":
                assert env["NEURAL_ATTN_HOST"] == "127.0.0.1" and "ports" not in service
        published = {p.rsplit(":", 2)[2] for p in services["neural-attn"]["ports"]}
        assert published == {"50051", "9090"}  # gRPC and metrics
        assert services["envoy"]["ports"][0].startswith("127.0.0.1:")
    # published only where the operator says, by a variable
    opened = _resolved((COMPOSE,), {"NEURAL_ATTN_PUBLISH": "0.0.0.0"})["services"]["neural-attn"]
    assert opened["ports"][0].startswith("0.0.0.0:")


def test_the_default_profile_runs_anywhere_and_the_gpu_file_adds_the_gpu():
    cpu = _resolved((COMPOSE,))["services"]
    gpu = _resolved((COMPOSE, COMPOSE_GPU))["services"]
    assert set(gpu) == set(cpu)  # the override adds no service of its own
    assert "profiles" not in cpu["neural-attn"]  # `docker compose up` starts it
    for name in SERVER_SERVICES:
        assert "nvidia" not in str(cpu[name].get("deploy", {}))
        assert "cpu" in cpu[name]["build"]["args"]["TORCH_INDEX"]
        assert cpu[name]["build"]["args"]["TF_PACKAGE"] == "tensorflow-cpu==2.21.0"
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert "/cu1" in gpu[name]["build"]["args"]["TORCH_INDEX"]
        assert gpu[name]["build"]["args"]["TF_PACKAGE"] == "tensorflow[and-cuda]==2.21.0"
        assert _env(gpu[name])["NEURAL_ATTN_DEVICE"] == "cuda"
        assert gpu[name]["image"] != cpu[name]["image"]
    assert int(gpu["neural-attn-pool"]["deploy"]["replicas"]) >= 2


def test_envoy_reaches_the_replica_pool_over_http2_with_grpc_health():
    services = _resolved((COMPOSE,))["services"]
    envoy = services["envoy"]
    assert envoy["profiles"] == ["envoy"] and services["neural-attn-pool"]["profiles"] == ["envoy"]
    host_config = envoy["volumes"][0].split(":")[0]
    config = yaml.safe_load((ROOT / host_config).read_text())
    cluster = config["static_resources"]["clusters"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    port = int(_env(services["neural-attn-pool"])["NEURAL_ATTN_PORT"])
    assert address["socket_address"] == {"address": "neural-attn-pool", "port_value": port}
    assert "http2_protocol_options" in str(cluster)  # gRPC needs HTTP/2 upstream
    assert "grpc_health_check" in cluster["health_checks"][0]
    assert envoy["depends_on"] == ["neural-attn-pool"]


# --- Kubernetes -----------------------------------------------------------------------------


def _manifests() -> dict[str, dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files, "kustomization.yaml lists every manifest"
    return {name: yaml.safe_load((K8S / name).read_text()) for name in files}


# 1.27: the first release with gRPC probes GA; and the newest schemas the validator ships.
K8S_VERSIONS = ["1.27", "latest"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_offline(version):
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is a dev dependency: make setup"
    )
    if version == "latest":
        version = kv.latest_version()
    for manifest in _manifests().values():
        kv.validate(manifest, version, strict=True)  # raises on any unknown or missing field
    # the check is strict: a misspelt field fails
    broken = copy.deepcopy(_manifests()["deployment.yaml"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, version, strict=True)


def test_kubernetes_deployment_matches_the_server(tmp_path):
    from neural_attn.server.main import RunOptions

    m = _manifests()
    deployment, service = m["deployment.yaml"], m["service.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert set(env) <= _known_variables()
    token = tmp_path / "token"  # the Secret's file, as the pod would see it
    token.write_text("from-the-secret\n")
    config, run = _server_settings(env | {"NEURAL_ATTN_TOKEN_FILE": str(token)})
    assert config.auth_token == "from-the-secret"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": run.port, "metrics": run.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == run.port, probe  # grpc.health.v1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert config.device == "cuda"
    # the weights volume is where the server looks, read-only
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    weights = next(v for v in mounts.values() if v["mountPath"] == config.weights_dir)
    assert weights["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[weights["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == m["pvc.yaml"]["metadata"]["name"]
    # a token from a Secret, never a plain value; the pod runs as the image's user
    assert env["NEURAL_ATTN_TOKEN_FILE"].startswith(mounts["token"]["mountPath"] + "/")
    assert pod["securityContext"]["runAsNonRoot"] is True
    grace = next(f.default for f in dataclasses.fields(RunOptions) if f.name == "grace")
    assert pod["terminationGracePeriodSeconds"] >= max(run.grace, grace) + 10
    # the headless Service selects these pods, so DNS lists each replica for round_robin
    assert service["spec"]["clusterIP"] == "None"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert m["pdb.yaml"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 remove / replace / test, what the CPU overlay uses (kustomize applies it)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "remove":
            del node[key]
        elif op["op"] == "replace":
            assert key in node if isinstance(node, dict) else key < len(node), op
            node[key] = op["value"]
        elif op["op"] == "test":
            assert node[key] == op["value"], op
        else:
            raise AssertionError(f"unsupported op {op}")
    return doc


def test_kubernetes_cpu_overlay_removes_the_gpu_and_still_validates():
    overlay = yaml.safe_load((K8S / "cpu" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "neural-attn"}
    deployment = _json_patch(_manifests()["deployment.yaml"], yaml.safe_load(patch["patch"]))
    (image,) = overlay["images"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    name, _tag = container["image"].split(":")
    assert image["name"] == name and image["newTag"] == "cpu"
    assert "nvidia" not in str(deployment)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NEURAL_ATTN_DEVICE"] == "cpu"
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(deployment, kv.latest_version(), strict=True)


# --- the smoke test and the docs ------------------------------------------------------------


def test_make_compose_smoke_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^compose-smoke:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "deploy/compose-smoke.sh" in target.group(1)
    script = ROOT / "deploy" / "compose-smoke.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert 'neural-attn-client" visualize' in script.read_text()


def test_readme_deployment_section_covers_compose_gpu_kubernetes_and_the_smoke_test():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deployment\n", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "docker-compose.gpu.yml",
        "NVIDIA Container Toolkit",
        "deploy/k8s",
        "make compose-smoke",
        "deploy/envoy.yaml",
        "--target client",
    ):
        assert needle in section, needle
