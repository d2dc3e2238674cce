"""PyTorch backend: builds a `NeuralNet` from the IR and captures attention.

Attention path: an explicit softmax(Q K^T / sqrt(key_dim)) in `torch_layers.SelfAttention`
(never `nn.MultiheadAttention`/SDPA, which do not materialize per-head weights).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neural_attn.backends import torch_layers
from neural_attn.backends.base import Backend, BuiltModel, prepare_input
from neural_attn.backends.codegen import Constructor, render_call, render_module
from neural_attn.backends.weights import initial_weights, weight_shapes
from neural_attn.dsl.ir import Layer, Network
from neural_attn.errors import InvalidInputError

_SIMPLE = {
    "GlobalAveragePooling1D": "GlobalAveragePooling1D",
    "GlobalMaxPooling1D": "GlobalMaxPooling1D",
    "Flatten": "nn.Flatten",
}


def constructor(layer: Layer) -> Constructor:
    """The torch constructor call for one IR layer (used by the builder and the code writer)."""
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


def _resolve(dotted: str) -> Any:
    obj: Any = {"nn": torch.nn, **vars(torch_layers)}[dotted.split(".")[0]]
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


# Neutral layout -> torch layout and back. A kernel (in, out) is a Linear weight (out, in).
def _to_torch(param: str, value: np.ndarray) -> np.ndarray:
    if param.endswith(("query_kernel", "key_kernel", "value_kernel")):  # (d, heads, key_dim)
        return value.reshape(value.shape[0], -1).T
    if param.endswith("kernel"):  # (in, out) or the attention output's (heads, key_dim, d)
        return value.reshape(-1, value.shape[-1]).T
    return value.reshape(-1) if param.endswith("bias") else value


def _from_torch(param: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if param.endswith("kernel"):
        return np.ascontiguousarray(value.T).reshape(shape)
    return value.reshape(shape)


def _parameters(layer: Layer, block: Any) -> dict[str, torch.Tensor]:
    """Neutral parameter name -> torch parameter, for one layer."""

    def attention(prefix: str, sa: Any) -> dict[str, torch.Tensor]:
        out = {}
        for part in ("query", "key", "value", "output"):
            linear = getattr(sa, part)
            out[f"{prefix}{part}_kernel"] = linear.weight
            if linear.bias is not None:
                out[f"{prefix}{part}_bias"] = linear.bias
        return out

    def dense(prefix: str, d: Any) -> dict[str, torch.Tensor]:
        linear = d.linear
        bias = {f"{prefix}bias": linear.bias} if linear.bias is not None else {}
        return {f"{prefix}kernel": linear.weight, **bias}

    def norm(prefix: str, n: Any) -> dict[str, torch.Tensor]:
        return {f"{prefix}gamma": n.weight, f"{prefix}beta": n.bias}

    kind = layer.type
    if kind in ("Dense", "Output"):
        return dense("", block)
    if kind == "Embedding":
        return {"embeddings": block.weight}
    if kind == "LayerNormalization":
        return norm("", block)
    if kind == "MultiHeadAttention":
        return attention("", block)
    if kind == "TransformerEncoder":
        return {
            **attention("attention/", block.attention),
            **norm("attention_norm/", block.attention_norm),
            **dense("ffn_1/", block.ffn_1),
            **dense("ffn_2/", block.ffn_2),
            **norm("ffn_norm/", block.ffn_norm),
        }
    return {}


class PyTorchModel(BuiltModel):
    backend = "pytorch"
    attention_path = "explicit softmax(QK^T/sqrt(d_k)) in torch_layers.SelfAttention (no SDPA)"

    def __init__(self, network: Network, *, seed: int, device: str) -> None:
        self.network = network
        self.device = device
        self._lock = threading.Lock()
        self.model = (
            torch_layers.NeuralNet(
                [
                    (layer.name, _resolve(name)(**kwargs))
                    for layer in network.layers
                    for name, kwargs in [constructor(layer)]
                ]
            )
            .to(device)
            .eval()
        )
        self.set_weights(initial_weights(network, seed))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def forward(
        self, data: np.ndarray, *, capture: Collection[str] = ()
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        prepared = prepare_input(self.network, data)
        store: dict[str, torch.Tensor] = {}
        x = torch.from_numpy(prepared.array).to(self.device)
        with self._lock, torch.inference_mode():
            out = self.model.run(x, capture=store, start=prepared.start)
        wanted = set(capture)
        probs = {k: v.float().cpu().numpy() for k, v in store.items() if k in wanted}
        return out.float().cpu().numpy(), probs

    def _all_parameters(self) -> dict[str, torch.Tensor]:
        return {
            f"{layer.name}/{param}": tensor
            for layer in self.network.layers
            for param, tensor in _parameters(layer, self.model.blocks[layer.name]).items()
        }

    def get_weights(self) -> dict[str, np.ndarray]:
        shapes = weight_shapes(self.network)
        return {
            key: _from_torch(key, t.detach().cpu().numpy(), shapes[key])
            for key, t in self._all_parameters().items()
        }

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for key, tensor in self._all_parameters().items():
                value = _to_torch(key, np.asarray(weights[key], dtype=np.float32))
                if tuple(value.shape) != tuple(tensor.shape):
                    raise InvalidInputError(
                        f"weight {key} has shape {tuple(weights[key].shape)}, which does not fit "
                        f"the model's {tuple(tensor.shape)} (torch layout)"
                    )
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))

    def generated_code(self) -> str:
        return generate_code(self.network)


def generate_code(network: Network) -> str:
    lines = [
        "def create_model():",
        '    """The network as a torch module (random weights), in eval mode."""',
        "    model = NeuralNet(",
        "        [",
        *(
            f"            ({layer.name!r}, {render_call(constructor(layer))}),"
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
        blocks_module=Path(torch_layers.__file__),
        body="\n".join(lines),
    )


class PyTorchBackend(Backend):
    name = "pytorch"

    def build(self, network: Network, *, seed: int, device: str = "auto") -> BuiltModel:
        resolved = "cuda" if torch.cuda.is_available() and device in ("auto", "cuda") else "cpu"
        return PyTorchModel(network, seed=seed, device=resolved)


BACKEND = PyTorchBackend()
