"""One floor in a clean process: nothing loaded but what the floor needs (no server, no other
framework, no bench). The bench starts it with a JSON spec, waits for its "READY" line (which
says the process's thread counts), then writes "run" once per timed call; each answer is the
seconds the call took, measured here, so the pipe's round trip is not counted. EOF ends it.

    python bench/_floor_worker.py '{"kind": "torch", "seq": 1024, "width": 256, ...}'

Kinds:
    torch    plain torch.nn.MultiheadAttention blocks (bench/_floors.py), every layer as numpy
    keras    plain Keras 3 MultiHeadAttention blocks (bench/_floors.py), every layer as numpy
    project  the project's own built model, `stream()` layer by layer on its pass thread, as
             the server runs it, malloc set as the server's (one framework loaded, no gRPC);
             with "weights" (a neutral safetensors file) trained, on token ids
    hf       transformers' eager forward of the checkpoint at "checkpoint", output_attentions
             (torch and transformers only, bench/_hf_floor.py)
    bare     the client of a bare gRPC stream (`_serve.py bare` at `target`): every message
             received and dropped (grpc only)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _data(spec: dict[str, Any]):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.standard_normal((1, spec["seq"], spec["width"])).astype(np.float32)


def _plain(spec: dict[str, Any]) -> Callable[[], Any]:
    from _floors import keras_floor, torch_floor

    shape = {"layers": spec["layers"], "heads": spec["heads"], "ff": spec["ff"]}
    if spec["kind"] == "torch":
        return torch_floor(_data(spec), device=spec.get("device", "cpu"), **shape)
    return keras_floor(_data(spec), **shape)


def _project(spec: dict[str, Any]) -> Callable[[], Any]:
    from neural_attn.backends.base import get_backend
    from neural_attn.dsl import compile_source
    from neural_attn.server.memory import keep_freed_memory

    keep_freed_memory()  # the server's process does (neural-attn-server's main)

    net = compile_source(spec["source"], filename="floor.neural")
    names = [layer.name for _, layer in net.attention_sites]
    weights = None
    if spec.get("weights"):  # a trained model: its neutral weights file, token ids as input
        from _hf_floor import bench_ids

        from neural_attn.backends.weight_files import SAFETENSORS, read_neutral

        content = Path(spec["weights"]).read_bytes()
        weights = read_neutral(net, content, SAFETENSORS, name=spec["weights"])
        data = bench_ids(spec["vocab"], spec["seq"])
    else:
        data = _data(spec)
    backend = get_backend(spec["backend"])
    model = backend.build(net, seed=0, device=spec.get("device", "cpu"), weights=weights)

    def stream() -> None:
        seen = set()  # a long layer comes as several tiles of rows
        for name, tile in model.stream(data, capture=names):
            seen.add(name)
            del tile
        assert len(seen) == len(names), seen

    return stream


def _hf(spec: dict[str, Any]) -> Callable[[], Any]:
    from _hf_floor import hf_forward

    return hf_forward(spec["checkpoint"], spec["seq"])


def _bare(spec: dict[str, Any]) -> Callable[[], Any]:
    import grpc
    from _common import MIB, drain
    from _serve import BARE_METHOD

    channel = grpc.insecure_channel(
        spec["target"], options=[("grpc.max_receive_message_length", 512 * MIB)]
    )
    call = channel.unary_stream(BARE_METHOD, request_serializer=None, response_deserializer=None)
    return lambda: drain(call, spec["total"])


def threads() -> dict[str, Any]:
    """This process's OS threads and, where loaded, each framework's own thread settings."""
    info: dict[str, Any] = {"os_threads": threading.active_count()}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                info["os_threads"] = int(line.split()[1])
    except OSError:
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_intra_op"] = torch.get_num_threads()
        info["torch_inter_op"] = torch.get_num_interop_threads()
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        info["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
    info["loaded"] = sorted(m for m in ("torch", "tensorflow", "grpc") if m in sys.modules)
    return info


def main() -> None:
    spec = json.loads(sys.argv[1])
    kinds = {"torch": _plain, "keras": _plain, "project": _project, "bare": _bare, "hf": _hf}
    make = kinds[spec["kind"]]
    once = make(spec)
    once()  # warm: compiled, caches filled
    print("READY " + json.dumps(threads()), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        start = time.perf_counter()
        once()
        print(f"{time.perf_counter() - start:.9f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The server turns oneDNN on (TensorFlow leaves it off on some CPUs, AMD's among them, and
    # then runs the same graph 2-3x slower): a floor without it would flatter the ratios.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    main()
