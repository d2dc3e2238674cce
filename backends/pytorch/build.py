"""PyTorch backend: builds a `NeuralNet` from the IR and captures attention.

Attention path: an explicit softmax(Q K^T / sqrt(key_dim)) in `blocks.SelfAttention`
(never `nn.MultiheadAttention`/SDPA, which do not materialize per-head weights).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from neural_attn.backends.base import (
    Backend,
    BuiltModel,
    PreparedInput,
    padding_masked_layers,
    stopped,
)
from neural_attn.backends.codegen import instantiate, render_call, render_module
from neural_attn.backends.pytorch import blocks, recurrent, spatial
from neural_attn.backends.pytorch.catalogue import constructor, parameters
from neural_attn.backends.pytorch.weights import from_torch, read_state_dict, to_torch
from neural_attn.backends.streaming import Reduction, TileCut, on_pass_thread
from neural_attn.backends.weight_files import check_neutral
from neural_attn.backends.weights import initial_weights, weight_shapes
from neural_attn.dsl.ir import Network
from neural_attn.errors import InvalidInputError

# Keep GPU attention float32-exact: no TF32 in matmuls or convolutions.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_BLOCK_MODULES = (blocks, spatial, recurrent)
F_ = TypeVar("F_", bound=Callable[..., Any])


def _on_pass_thread(method: F_) -> F_:
    """Torch work outside the passes (building, weights) runs on the pass thread too: one
    thread running torch ops keeps one OpenMP team (`streaming._Threads` says why that matters)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return on_pass_thread(lambda: method(*args, **kwargs))

    return wrapper  # type: ignore[return-value]


def _namespace() -> dict[str, Any]:
    names: dict[str, Any] = {"nn": torch.nn}
    for module in _BLOCK_MODULES:
        names.update(vars(module))
    return names


def _attention_modules(layers: torch.nn.ModuleDict) -> Iterator[tuple[str, blocks.SelfAttention]]:
    """(layer name, its SelfAttention) for every attention layer, inside residual blocks too."""
    for name, block in layers.items():
        if isinstance(block, blocks.SelfAttention):
            yield name, block
        elif isinstance(block, blocks.TransformerEncoderBlock):
            yield name, block.attention
        elif isinstance(block, blocks.Residual):
            yield from _attention_modules(block.layers)


def _masked_context(
    heads: int, weights: torch.Tensor, _module: Any, args: tuple[Any, ...]
) -> tuple[Any, ...]:
    """The context [batch, query, heads * key_dim] with head h of item i times weights[i, h]."""
    context = args[0]
    batch, length, width = context.shape
    split = context.reshape(batch, length, heads, width // heads) * weights[:, None, :, None]
    return (split.reshape(batch, length, width), *args[1:])


class _PassHooks:
    """Hooks on every SelfAttention of one model, installed once, that serve whichever pass
    runs on the calling thread: passes of one model run side by side (a stream whose reader
    stalls holds its own pass, never another caller's), each with its own `capture`.

    Each tile of a layer's probabilities (the whole layer, when it is one tile) reaches the
    pass's `capture` the moment it exists (`blocks.AttentionTile`), not when its block
    returns, and `capture.gate()` runs right before the next layer's scores are computed
    (after the value projection): so a stream's consumer sends one layer while the pass
    computes the rest of that block and the next one's projections. Within a long layer the
    pass computes the next tile while the consumer has the last one, and waits there (two
    tiles exist at most); it is asked `should_stop` between its tiles.
    """

    def __init__(self, model: blocks.NeuralNet) -> None:
        self._local = threading.local()
        for name, attention in _attention_modules(model.blocks):
            attention.tile.register_forward_hook(functools.partial(self._emit, name))
            attention.value.register_forward_hook(self._gate)

    @contextmanager
    def serving(
        self, capture: Any, should_stop: Callable[[], bool] | None = None
    ) -> Iterator[None]:
        """Route the hooks to `capture` for a pass run on this thread inside the block; a pass
        asks `should_stop` again right before each layer's scores (a long layer stops there)."""
        self._local.capture, self._local.should_stop = capture, should_stop
        try:
            yield
        finally:
            self._local.capture = self._local.should_stop = None

    def _emit(self, name: str, _module: Any, args: Any, probs: Any) -> None:
        """A tile of query rows (`blocks.AttentionTile`)."""
        capture = getattr(self._local, "capture", None)
        if capture is None:
            return
        _, start, queries, step = args
        capture.tile(name, start, probs, queries, step)

    def _gate(self, *_: Any) -> None:
        gate = getattr(getattr(self._local, "capture", None), "gate", None)
        if gate is not None:
            gate()
        should_stop = getattr(self._local, "should_stop", None)
        if should_stop is not None and should_stop():
            raise stopped()


class PyTorchModel(BuiltModel):
    backend = "pytorch"
    attention_path = "explicit softmax(QK^T/sqrt(d_k)) in pytorch.blocks.SelfAttention (no SDPA)"
    gates_attention = True  # _PassHooks: after every SelfAttention's value projection

    def __init__(
        self,
        network: Network,
        *,
        seed: int,
        device: str,
        weights: dict[str, np.ndarray] | None = None,
    ) -> None:
        padding = padding_masked_layers(network)
        namespace = _namespace()
        self.network = network
        self.device = device
        self.model = (
            blocks.NeuralNet(
                [
                    (layer.name, instantiate(constructor(layer, padding), namespace))
                    for layer in network.layers
                ]
            )
            .to(device)
            .eval()
        )
        self._hooks = _PassHooks(self.model)
        self.set_weights(initial_weights(network, seed) if weights is None else weights)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def _pass(
        self,
        prepared: PreparedInput,
        capture: Any,
        should_stop: Callable[[], bool] | None,
    ) -> torch.Tensor | None:
        x = torch.from_numpy(prepared.array).to(self.device)
        with torch.inference_mode(), self._hooks.serving(capture, should_stop):
            return self.model.run(x, capture=capture, start=prepared.start, should_stop=should_stop)

    @contextmanager
    def head_mask(self, masks: Mapping[str, np.ndarray]) -> Iterator[None]:
        """`BuiltModel.head_mask`: a forward pre-hook on each named SelfAttention's output
        projection, whose input is the context [batch, query, heads * key_dim]."""
        attention = dict(_attention_modules(self.model.blocks))
        handles = []
        try:
            for name, mask in masks.items():
                if name not in attention:
                    raise InvalidInputError(f"`{name}` is not an attention layer of this model")
                block = attention[name]
                weights = torch.from_numpy(np.asarray(mask, np.float32)).to(self.device)
                handles.append(
                    block.output.register_forward_pre_hook(
                        functools.partial(_masked_context, block.num_heads, weights)
                    )
                )
            yield
        finally:
            for handle in reversed(handles):
                handle.remove()

    def _to_numpy(self, tensor: torch.Tensor, reduction: Reduction | None = None) -> np.ndarray:
        if reduction is not None and not reduction.exact:
            tensor = reduce_attention(tensor, reduction)
        return tensor.float().contiguous().cpu().numpy()

    def _cut_to_numpy(self, tile: torch.Tensor, cut: TileCut) -> np.ndarray:
        tile = cut_attention(tile, cut.head, cut.rows, cut.keys, 1, cut.key_block, cut.mode)
        return self._to_numpy(tile)

    @_on_pass_thread
    def set_tile_elements(self, budget: int) -> None:
        for _, attention in _attention_modules(self.model.blocks):
            attention.tile_elements = budget

    def _all_parameters(self) -> dict[str, tuple[str, Any]]:
        """Neutral key -> (layout, torch tensor or tuple of them)."""
        out: dict[str, tuple[str, Any]] = {}
        for layer in self.network.layers:
            out.update(parameters(layer, self.model.blocks[layer.name]))
        return out

    @_on_pass_thread
    def get_weights(self) -> dict[str, np.ndarray]:
        shapes = weight_shapes(self.network)

        def numpy(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        return {
            key: from_torch(
                layout,
                key.rsplit("/", 1)[-1],
                tuple(map(numpy, t)) if isinstance(t, tuple) else numpy(t),
                shapes[key],
            )
            for key, (layout, t) in self._all_parameters().items()
        }

    @_on_pass_thread
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_neutral(self.network, weights)
        with torch.no_grad():
            for key, (layout, tensors) in self._all_parameters().items():
                param = key.rsplit("/", 1)[-1]
                values = to_torch(layout, param, np.asarray(weights[key], dtype=np.float32))
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
    q0, q1, k0, k1 = reduction.window(q_len, k_len)
    bq, bk = reduction.blocks(q_len, k_len)
    return cut_attention(probs, reduction.head, (q0, q1), (k0, k1), bq, bk, reduction.pool_mode)


def cut_attention(
    probs: torch.Tensor,
    head: int | None,
    query: tuple[int, int],
    key: tuple[int, int],
    bq: int,
    bk: int,
    mode: str,
) -> torch.Tensor:
    """One head (None: all), query rows and keys [start, stop), then blocks of bq x bk pooled
    by `mode` (the last of an axis partial), of [batch, head, query, key]."""
    if head is not None:
        probs = probs[:, head : head + 1]
    probs = probs[:, :, query[0] : query[1], key[0] : key[1]]
    if bq == bk == 1:
        return probs
    # ceil_mode keeps a partial last block; its mean is over the positions it covers.
    if mode == "max":
        return F.max_pool2d(probs, (bq, bk), ceil_mode=True)
    return F.avg_pool2d(probs, (bq, bk), ceil_mode=True, count_include_pad=False)


class PyTorchBackend(Backend):
    name = "pytorch"
    tile_elements = blocks.TILE_ELEMENTS

    @_on_pass_thread
    def build(
        self,
        network: Network,
        *,
        seed: int,
        device: str = "auto",
        weights: dict[str, np.ndarray] | None = None,
    ) -> BuiltModel:
        return PyTorchModel(network, seed=seed, device=self.resolve_device(device), weights=weights)

    def gpu_available(self) -> bool:
        return torch.cuda.is_available()

    def framework_version(self) -> str:
        return str(torch.__version__)

    @_on_pass_thread
    def read_weights(
        self, network: Network, content: bytes, fmt: str, *, name: str = ""
    ) -> dict[str, np.ndarray]:
        def scratch() -> PyTorchModel:
            return PyTorchModel(network, seed=0, device="cpu")

        return read_state_dict(network, content, name, scratch)


BACKEND = PyTorchBackend()
