"""PyTorch backend: builds a `NeuralNet` from the IR and captures attention.

Attention path: an explicit softmax(Q K^T / sqrt(key_dim)) in `torch_layers.SelfAttention`
(never `nn.MultiheadAttention`/SDPA, which do not materialize per-head weights).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from neural_attn.backends import torch_layers, torch_recurrent, torch_spatial
from neural_attn.backends.base import (
    Backend,
    BuiltModel,
    PreparedInput,
    padding_masked_layers,
)
from neural_attn.backends.codegen import Call, instantiate, mark_padding, render_call, render_module
from neural_attn.backends.info import resolve_device
from neural_attn.backends.streaming import Reduction
from neural_attn.backends.torch_weights import Tensors, from_torch, to_torch, walk
from neural_attn.backends.weight_files import check_neutral
from neural_attn.backends.weights import initial_weights, weight_shapes
from neural_attn.dsl.ir import Layer, Network
from neural_attn.errors import InvalidInputError

# Keep GPU attention float32-exact: no TF32 in matmuls or convolutions.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_SIMPLE = {
    "GlobalAveragePooling1D": "GlobalAveragePooling1D",
    "GlobalMaxPooling1D": "GlobalMaxPooling1D",
    "GlobalAveragePooling2D": "GlobalAveragePooling2D",
    "GlobalMaxPooling2D": "GlobalMaxPooling2D",
    "Flatten": "nn.Flatten",
}
_POOLS = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D")
_RECURRENT = ("LSTM", "GRU", "SimpleRNN")
_BLOCK_MODULES = (torch_layers, torch_spatial, torch_recurrent)


def _width(layer: Layer) -> int:
    width = layer.input_shape[-1] if layer.input_shape else None
    if width is None:
        raise InvalidInputError(
            f"{layer.type} `{layer.name}` needs a known size of its input's last axis; "
            f"it gets {layer.input_shape}"
        )
    return int(width)


def constructor(layer: Layer, padding: Collection[str] = ()) -> Call:
    """The constructor call for one IR layer; used by the builder and the code writer alike."""
    return mark_padding(_constructor(layer), layer, padding)


def _constructor(layer: Layer) -> Call:
    """The torch constructor call for one IR layer (used by the builder and the code writer)."""
    kind = layer.type
    if kind in ("Conv1D", "Conv2D"):
        return Call(
            kind,
            {
                "in_channels": _width(layer),
                "filters": layer["filters"],
                "kernel_size": layer["kernel_size"],
                "strides": layer["strides"],
                "padding": layer["padding"],
                "activation": layer["activation"],
            },
        )
    if kind in _POOLS:
        return Call(
            kind,
            {
                "pool_size": layer["pool_size"],
                "strides": layer["strides"],
                "padding": layer["padding"],
            },
        )
    if kind == "BatchNormalization":
        return Call(
            "BatchNormalization",
            {
                "num_features": _width(layer),
                "momentum": float(layer["momentum"]),
                "epsilon": float(layer["epsilon"]),
            },
        )
    if kind == "Activation":
        return Call("Activation", {"activation": layer["activation"]})
    if kind in _RECURRENT:
        return Call(
            kind,
            {
                "input_size": _width(layer),
                "units": layer["units"],
                "return_sequences": layer["return_sequences"],
            },
        )
    if kind == "ResidualConnection":
        return Call(
            "Residual",
            {
                "layers": [(child.name, constructor(child)) for child in layer.children],
                "shortcut": layer["shortcut"],
            },
        )
    if kind == "PositionalEncoding":
        return Call(
            "PositionalEncoding",
            {"d_model": _width(layer), "max_len": layer["max_len"], "kind": layer["kind"]},
        )
    if kind == "TransformerDecoder":
        return Call(
            "TransformerDecoderBlock",
            {
                "d_model": _width(layer),
                "num_heads": layer["num_heads"],
                "ff_dim": layer["ff_dim"],
                "dropout": float(layer["dropout"]),
                "activation": layer["activation"],
            },
        )
    return Call(*_core(layer))


def _core(layer: Layer) -> tuple[str, dict[str, Any]]:
    kind = layer.type
    width = layer.input_shape[-1] if layer.input_shape else None
    if kind in ("Dense", "Output"):
        return "Dense", {
            "in_features": width,
            "units": layer["units"],
            "activation": layer["activation"],
            "use_bias": layer.get("use_bias", True),
        }
    if kind == "Embedding":
        return "nn.Embedding", {
            "num_embeddings": layer["input_dim"],
            "embedding_dim": layer["output_dim"],
        }
    if kind == "LayerNormalization":
        return "nn.LayerNorm", {"normalized_shape": width, "eps": float(layer["epsilon"])}
    if kind == "Dropout":
        return "nn.Dropout", {"p": float(layer["rate"])}
    if kind == "TransformerEncoder":
        return "TransformerEncoderBlock", {
            "d_model": width,
            "num_heads": layer["num_heads"],
            "ff_dim": layer["ff_dim"],
            "dropout": float(layer["dropout"]),
            "activation": layer["activation"],
        }
    if kind == "MultiHeadAttention":
        return "SelfAttention", {
            "d_model": width,
            "num_heads": layer["num_heads"],
            "key_dim": layer["key_dim"],
            "dropout": float(layer["dropout"]),
            "causal": bool(layer["causal"]),
            "use_bias": bool(layer.get("use_bias", True)),
        }
    if kind in _SIMPLE:
        return _SIMPLE[kind], {}
    raise InvalidInputError(f"layer type {kind} (`{layer.name}`) is not built by this server yet")


def _namespace() -> dict[str, Any]:
    names: dict[str, Any] = {"nn": torch.nn}
    for module in _BLOCK_MODULES:
        names.update(vars(module))
    return names


class PyTorchModel(BuiltModel):
    backend = "pytorch"
    attention_path = "explicit softmax(QK^T/sqrt(d_k)) in torch_layers.SelfAttention (no SDPA)"

    def __init__(self, network: Network, *, seed: int, device: str) -> None:
        padding = padding_masked_layers(network)
        namespace = _namespace()
        self.network = network
        self.device = device
        self._lock = threading.Lock()
        self.model = (
            torch_layers.NeuralNet(
                [
                    (layer.name, instantiate(constructor(layer, padding), namespace))
                    for layer in network.layers
                ]
            )
            .to(device)
            .eval()
        )
        self.set_weights(initial_weights(network, seed))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _pass(
        self,
        prepared: PreparedInput,
        capture: Any,
        should_stop: Callable[[], bool] | None,
    ) -> torch.Tensor | None:
        x = torch.from_numpy(prepared.array).to(self.device)
        with self._lock, torch.inference_mode():
            return self.model.run(x, capture=capture, start=prepared.start, should_stop=should_stop)

    def _to_numpy(self, tensor: torch.Tensor, reduction: Reduction | None = None) -> np.ndarray:
        if reduction is not None and not reduction.exact:
            tensor = reduce_attention(tensor, reduction)
        return tensor.float().contiguous().cpu().numpy()

    def _all_parameters(self) -> dict[str, tuple[str, str, Tensors]]:
        out: dict[str, tuple[str, str, Tensors]] = {}
        for layer in self.network.layers:
            out.update(walk(layer, self.model.blocks[layer.name], f"{layer.name}/"))
        return out

    def get_weights(self) -> dict[str, np.ndarray]:
        shapes = weight_shapes(self.network)

        def numpy(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        return {
            key: from_torch(
                kind,
                param,
                tuple(map(numpy, t)) if isinstance(t, tuple) else numpy(t),
                shapes[key],
            )
            for key, (kind, param, t) in self._all_parameters().items()
        }

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_neutral(self.network, weights)
        with torch.no_grad():
            for key, (kind, param, tensors) in self._all_parameters().items():
                values = to_torch(kind, param, np.asarray(weights[key], dtype=np.float32))
                pairs = zip(
                    tensors if isinstance(tensors, tuple) else (tensors,),
                    values if isinstance(values, tuple) else (values,),
                    strict=True,
                )
                for tensor, value in pairs:
                    tensor.copy_(
                        torch.from_numpy(np.ascontiguousarray(value)).reshape(tensor.shape)
                    )

    def generated_code(self, network: Network | None = None) -> str:
        return generate_code(network or self.network)


def generate_code(network: Network) -> str:
    padding = padding_masked_layers(network)
    lines = [
        "def create_model():",
        '    """The network as a torch module (random weights), in eval mode."""',
        "    model = NeuralNet(",
        "        [",
        *(
            f"            ({layer.name!r}, {render_call(constructor(layer, padding), 3)}),"
            for layer in network.layers
        ),
        "        ]",
        "    )",
        "    return model.eval()",
        "",
        "",
        'if __name__ == "__main__":',
        "    print(create_model())",
    ]
    return render_module(
        backend="pytorch",
        network=network,
        blocks_modules=[Path(m.__file__ or "") for m in _BLOCK_MODULES],
        body="\n".join(lines),
    )


def reduce_attention(probs: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """One head, a window and block pooling of [batch, head, query, key], on probs' device."""
    _, _, q_len, k_len = probs.shape
    if reduction.head is not None:
        probs = probs[:, reduction.head : reduction.head + 1]
    q0, q1, k0, k1 = reduction.window(q_len, k_len)
    probs = probs[:, :, q0:q1, k0:k1]
    bq, bk = reduction.blocks(q_len, k_len)
    if bq == bk == 1:
        return probs
    # ceil_mode keeps a partial last block; its mean is over the positions it covers.
    if reduction.pool_mode == "max":
        return F.max_pool2d(probs, (bq, bk), ceil_mode=True)
    return F.avg_pool2d(probs, (bq, bk), ceil_mode=True, count_include_pad=False)


class PyTorchBackend(Backend):
    name = "pytorch"

    def build(self, network: Network, *, seed: int, device: str = "auto") -> BuiltModel:
        return PyTorchModel(network, seed=seed, device=resolve_device(self.name, device))


BACKEND = PyTorchBackend()
