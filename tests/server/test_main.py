"""`neural-attn-server` as users run it: the installed command, its flags, environment and
security defaults."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from serverproc import SERVER_BIN, SMALL, health_status

from neural_attn.errors import AuthenticationError
from neural_attn.server.config import ServerConfig
from neural_attn.server.main import RunOptions, choose_host, parse_settings, settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_installed_command_serves_and_exits_0_on_sigterm(start_server):
    from neural_attn.client import AttentionClient

    server = start_server("--port", "0", "--max-workers", "4").wait_serving()
    assert server.target.startswith("127.0.0.1:")  # loopback: no token, no TLS
    with AttentionClient(server.target) as client:
        model = client.compile(SMALL, backend="pytorch")
        layers = dict(client.extract_attention(model))
    assert {name: a.shape for name, a in layers.items()} == {
        "transformer_encoder_0": (1, 4, 10, 10),
        "transformer_encoder_1": (1, 4, 10, 10),
    }
    server.terminate()
    assert server.wait(30) == 0
    log = server.log()
    assert "listening on loopback only" in log and "--host 0.0.0.0" in log
    assert re.search(r"rpc=Compile code=OK", log)
    assert re.search(r"rpc=ExtractAttention code=OK .*messages=2", log)
    assert "drained: every call finished" in log


def _sample(setting, default):
    """A value for the field unlike its default, as text and as the config should hold it."""
    if setting.choices:
        value = next(c for c in setting.choices if c != default)
        return value, value
    kind = setting.kind
    if kind in (int, int | None):
        return "7", 7
    if kind in (float, float | None):
        return "2.5", 2.5
    if kind in (bool, bool | None):
        return ("false", False) if default else ("true", True)
    return "/some/where", "/some/where"


def _get(config, run, field):
    return getattr(config if hasattr(config, field) else run, field)


@pytest.mark.parametrize("setting", settings(), ids=lambda s: s.field)
def test_every_field_is_a_flag_and_an_environment_variable(setting, tmp_path):
    default = next(f.default for f in dataclasses.fields(setting.owner) if f.name == setting.field)
    if setting.field == "auth_token":
        token_file = tmp_path / "token"
        token_file.write_text("s3cret\n")
        text, value = str(token_file), "s3cret"
        env_text = "s3cret"  # NEURAL_ATTN_TOKEN holds the token itself
    else:
        text, value = _sample(setting, default)
        env_text = text
    config, run, _ = parse_settings([setting.flags[0], text], environ={})
    assert _get(config, run, setting.field) == value
    config, run, _ = parse_settings([], environ={setting.env: env_text})
    assert _get(config, run, setting.field) == value
    assert setting.env.startswith("NEURAL_ATTN_")


def test_the_readme_lists_every_flag_and_variable():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running the server", 1)[1].split("\n## ", 1)[0]
    missing = [
        name
        for s in settings()
        for name in (s.flags[0], s.env)
        if not re.search(rf"`{re.escape(name)}[ `=]", section)
    ]
    assert not missing, f"README 'Running the server' lacks {missing}"


def test_flags_win_over_the_environment_and_sizes_take_suffixes():
    config, run, _ = parse_settings(
        ["--max-workers", "3", "--max-message-bytes", "64MiB"],
        environ={"NEURAL_ATTN_MAX_WORKERS": "5", "NEURAL_ATTN_GRACE": "4", "NEURAL_ATTN_PORT": "0"},
    )
    assert (config.max_workers, config.max_message_bytes) == (3, 64 * 1024 * 1024)
    assert (run.grace, run.port) == (4.0, 0)
    assert ServerConfig().max_workers != 3 and RunOptions().grace == 30.0


def test_choices_are_taken_in_any_case_and_stored_as_documented():
    config, run, _ = parse_settings(
        ["--log-level", "debug", "--backend", "PyTorch"], environ={"NEURAL_ATTN_DEVICE": " CPU"}
    )
    assert (run.log_level, config.default_backend, config.device) == ("DEBUG", "pytorch", "cpu")
    config, run, _ = parse_settings([], environ={"NEURAL_ATTN_LOG_LEVEL": "warning"})
    assert run.log_level == "WARNING"
    with pytest.raises(SystemExit):
        parse_settings(["--log-level", "loud"], environ={})


def test_a_bad_environment_value_names_the_variable(start_server):
    server = start_server("--port", "0", env={"NEURAL_ATTN_MAX_WORKERS": "many"})
    assert server.wait(30) == 2
    assert "NEURAL_ATTN_MAX_WORKERS='many'" in server.log()


def test_tls_without_a_key_refuses_to_start(start_server, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("not used")
    server = start_server("--port", "0", "--tls-cert", str(cert))
    assert server.wait(30) == 2
    assert "TLS needs both --tls-cert and --tls-key" in server.log()


def test_secure_by_default():
    host, notes = choose_host(ServerConfig(), RunOptions())
    assert host == "127.0.0.1" and "--token-file" in notes[0] and "--host 0.0.0.0" in notes[0]
    host, notes = choose_host(ServerConfig(), RunOptions(host="0.0.0.0"))
    assert host == "0.0.0.0" and any("UNPROTECTED" in n and "NO TOKEN" in n for n in notes)
    host, notes = choose_host(ServerConfig(auth_token="t"), RunOptions())
    assert host == "0.0.0.0" and "clear text" in " ".join(notes)
    tls = ServerConfig(auth_token="t", tls_cert="c", tls_key="k")
    assert choose_host(tls, RunOptions()) == ("0.0.0.0", [])
    mtls = ServerConfig(tls_cert="c", tls_key="k", tls_client_ca="ca")
    assert choose_host(mtls, RunOptions()) == ("0.0.0.0", [])  # client certs authenticate
    assert choose_host(ServerConfig(), RunOptions(host="::1")) == ("::1", [])


def test_all_interfaces_without_a_token_warns_loudly(start_server):
    server = start_server("--host", "0.0.0.0", "--port", "0", "--log-format", "json")
    server.wait_serving()
    server.terminate()
    assert server.wait(30) == 0
    lines = [json.loads(line) for line in server.log().splitlines()]
    warnings = [line["message"] for line in lines if line["level"] == "warning"]
    assert any("UNPROTECTED" in w and "NO TOKEN and NO TLS" in w for w in warnings), warnings


def test_the_token_comes_from_a_file_never_the_command_line(start_server, tmp_path):
    from neural_attn.client import AttentionClient

    token = "t0k3n-" + "x" * 20
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server = start_server("--port", "0", "--token-file", str(token_file)).wait_serving()
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().decode()
    assert token not in cmdline
    assert token not in server.log()
    with AttentionClient(server.target, token="wrong", timeout=30) as client:
        with pytest.raises(AuthenticationError, match="needs a token"):
            client.compile(SMALL, backend="pytorch")
    with AttentionClient(server.target, token=token, timeout=60) as client:
        assert client.compile(SMALL, backend="pytorch").attention_layers
    # Health stays open for probes, token or not.
    with grpc.insecure_channel(server.target) as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    server.terminate()
    assert server.wait(30) == 0
    assert re.search(r"rpc=Compile code=UNAUTHENTICATED", server.log())


def test_the_token_from_the_environment(start_server):
    from neural_attn.client import AttentionClient

    server = start_server("--port", "0", env={"NEURAL_ATTN_TOKEN": "from-env"}).wait_serving()
    with AttentionClient(server.target, token="from-env", timeout=30) as client:
        assert client.server_info()["version"]
    with AttentionClient(server.target, timeout=30) as client:
        with pytest.raises(AuthenticationError):
            client.server_info()


def test_the_entry_point_is_the_installed_one():
    assert SERVER_BIN.is_file(), "pip install -e . installs the neural-attn-server command"


def test_without_the_server_extras_the_command_says_what_to_install():
    blocked = (
        "import sys; sys.modules['lark'] = None; "  # as if lark were not installed
        "from neural_attn.server.main import main; sys.exit(main(['--port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "pip install 'neural-attn[server]'" in result.stderr
    assert "Traceback" not in result.stderr
