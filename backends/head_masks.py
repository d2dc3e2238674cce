"""Zero chosen heads' contributions inside a built model's attention blocks, for ablation.

A head's contribution is zeroed *before the output projection*: the per-head context
``softmax(QK^T) V`` of that head is multiplied by 0 where the output projection reads it, so the
projection's bias stays and the other heads are untouched. The mask is per batch item, so one
pass runs many ablations side by side (item i of the batch with its own heads removed).

The attention blocks are not changed for this (the generated code stays byte-identical):
`head_mask` attaches a hook at the output projection's input, TransformerLens style, inside a
context manager that removes it in ``finally``:

- PyTorch: a forward pre-hook on ``SelfAttention.output`` (input ``[batch, query, heads *
  key_dim]``);
- Keras: ``MultiHeadAttention._output_dense`` (input ``[batch, query, heads, key_dim]``) is
  wrapped for the duration, the block's call run eagerly (not the backend's compiled one).

Hooks change the model object, so use them on a model of your own (`private_copy`), never on
one that other requests share.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from neural_attn.backends.base import BuiltModel, get_backend
from neural_attn.errors import InvalidInputError


def private_copy(model: BuiltModel, *, seed: int, device: str) -> BuiltModel:
    """A model of the same network and weights that no other request sees."""
    copy = get_backend(model.backend).build(model.network, seed=seed, device=device)
    copy.set_weights(model.get_weights())
    return copy


@contextmanager
def head_mask(model: BuiltModel, masks: Mapping[str, np.ndarray]) -> Iterator[None]:
    """While inside, each layer named in `masks` multiplies head h of batch item i by
    ``masks[layer][i, h]`` before its output projection (``masks[layer]``: (batch, heads))."""
    install = _torch_hook if model.backend == "pytorch" else _keras_wrap
    undo = []
    try:
        for name, mask in masks.items():
            undo.append(install(*_attention_block(model, name), np.asarray(mask, np.float32)))
        yield
    finally:
        for remove in reversed(undo):
            remove()


def _blocks(model: BuiltModel) -> Iterator[tuple[str, Any]]:
    """(name, block) of every layer, those inside residual blocks included."""
    framework_model: Any = getattr(model, "model")  # noqa: B009 - both backends keep it there
    if model.backend == "pytorch":
        stack = list(framework_model.blocks.items())
        while stack:
            name, block = stack.pop(0)
            yield name, block
            if hasattr(block, "layers") and hasattr(block.layers, "items"):
                stack.extend(block.layers.items())
    else:
        stack = list(framework_model.blocks)
        while stack:
            block = stack.pop(0)
            yield block.name, block
            stack.extend(getattr(block, "body", ()))


def _attention_block(model: BuiltModel, name: str) -> tuple[Any, Any]:
    """(the layer named `name`, its attention module: itself or the one an encoder block holds)."""
    for block_name, block in _blocks(model):
        if block_name == name:
            inner = getattr(block, "attention", block)
            if model.backend == "pytorch" and hasattr(inner, "output"):
                return block, inner
            if model.backend != "pytorch" and hasattr(inner, "mha"):
                return block, inner
            break
    raise InvalidInputError(f"`{name}` is not an attention layer of this model")


def _torch_hook(_block: Any, attention: Any, mask: np.ndarray) -> Any:
    import torch

    heads, key_dim = attention.num_heads, attention.key_dim
    weights = torch.from_numpy(mask).to(attention.output.weight.device)

    def pre_hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        context = args[0]  # [batch, query, heads * key_dim]
        batch, length, _ = context.shape
        split = context.reshape(batch, length, heads, key_dim) * weights[:, None, :, None]
        return (split.reshape(batch, length, heads * key_dim), *args[1:])

    handle = attention.output.register_forward_pre_hook(pre_hook)
    return handle.remove


def _keras_wrap(block: Any, attention: Any, mask: np.ndarray) -> Any:
    import keras

    # The backend compiles each block's call (a tf.function): a graph traced before the mask
    # would never see it, and one traced with it would keep it. The block runs eagerly while
    # masked and gets its compiled call back after.
    compiled = block.call
    if hasattr(compiled, "python_function"):
        block.call = compiled.python_function
    mha = attention.mha
    original = mha._output_dense
    weights = keras.ops.convert_to_tensor(mask[:, None, :, None])

    def masked(context: Any, *args: Any, **kwargs: Any) -> Any:
        # context: [batch, query, heads, key_dim]
        return original(context * keras.ops.cast(weights, context.dtype), *args, **kwargs)

    # object.__setattr__: a plain function is not a layer for Keras to track.
    object.__setattr__(mha, "_output_dense", masked)

    def undo() -> None:
        object.__setattr__(mha, "_output_dense", original)
        block.call = compiled

    return undo
