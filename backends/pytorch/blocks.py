"""PyTorch building blocks of neural-attn models.

This file is self-contained on purpose (it imports only torch and math): the code generator
copies it verbatim into `compiled_model_pytorch.py`, so the model a user reads is the model we run.

Attention is computed explicitly as softmax(Q K^T / sqrt(key_dim)) so the per-head
probabilities exist as a tensor: `nn.TransformerEncoderLayer` calls attention with
need_weights=False and the fused SDPA path never materializes them.

TransformerEncoder block (the documented architecture, identical in the TensorFlow backend):
    a, p = SelfAttention(x)          # p: [batch, head, q, k]
    x = LayerNorm_1(x + Dropout(a))  # epsilon: the block's, 1e-6 by default
    f = Linear(d)(act(Linear(ff_dim)(x)))
    x = LayerNorm_2(x + Dropout(f))
With norm_first (pre-norm, GPT-2's order) the norms come before each sub-layer instead:
    a, p = SelfAttention(LayerNorm_1(x)); x = x + Dropout(a)
    x = x + Dropout(Linear(d)(act(Linear(ff_dim)(LayerNorm_2(x)))))

TransformerDecoder block (decoder-only): the same block with causal self-attention, so query i
attends to keys 0..i only and the probabilities above the diagonal are exactly 0.

Data is channels-last everywhere, as in Keras: (batch, steps, features) or (batch, H, W, C).
Convolutions and pooling (the next module) permute to channels-first inside themselves only.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

ENCODER_NORM_EPSILON = 1e-6  # the blocks' default epsilon

ACTIVATIONS = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": F.relu,
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "swish": F.silu,
    "silu": F.silu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),  # Keras 3's default slope
    "softplus": F.softplus,
    "softsign": F.softsign,
}


class Dense(nn.Module):
    """Linear layer plus a named activation, applied to the last axis (as Keras does)."""

    def __init__(self, in_features, units, activation=None, use_bias=True):
        super().__init__()
        self.linear = nn.Linear(in_features, units, bias=use_bias)
        self.activation = activation

    def forward(self, x):
        return ACTIVATIONS[self.activation](self.linear(x))


# Query rows per tile are chosen so one tile's scores hold at most this many values (16 MiB of
# float32): a layer is computed a tile of query rows at a time, each row's softmax over all its
# keys, so memory per layer is O(rows x keys), never O(keys^2). Short sequences are one tile.
# Under glibc's largest mmap threshold (32 MiB), a freed tile's memory is reused by the next
# one; a larger tile is mapped afresh and page-faulted every time: at 2 x 8 x 4,096² on 2
# cores, 0.89 s a pass with 16 MiB tiles, 1.34 s with 64 MiB ones, 1.44 s with whole layers.
TILE_ELEMENTS = 1 << 22


def tile_rows(batch, heads, queries, keys, budget=TILE_ELEMENTS):
    """Query rows per tile: as many as keep batch x heads x rows x keys within `budget`."""
    return max(1, min(queries, budget // max(1, batch * heads * keys)))


class AttentionTile(nn.Module):
    """Identity at the point where the probabilities [batch, head, rows, key] of query rows
    `start`.. of a `queries`-row layer, tiled `step` rows at a time, exist: forward hooks
    read each tile there."""

    def forward(self, probs, start, queries, step):
        return probs


class SelfAttention(nn.Module):
    """Multi-head self-attention returning its output and per-head probabilities.

    The probabilities are computed a tile of query rows at a time (`tile_rows`, within
    `tile_elements` values per tile) and each tile passes `self.tile`; when the layer is one
    tile they are also returned, else None is (no whole layer ever exists).
    """

    def __init__(
        self,
        d_model,
        num_heads,
        key_dim,
        dropout=0.0,
        causal=False,
        use_bias=True,
        mask_padding=False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.causal = causal
        self.mask_padding = mask_padding
        self.tile_elements = TILE_ELEMENTS
        inner = num_heads * key_dim
        self.query = nn.Linear(d_model, inner, bias=use_bias)
        self.key = nn.Linear(d_model, inner, bias=use_bias)
        self.value = nn.Linear(d_model, inner, bias=use_bias)
        self.output = nn.Linear(inner, d_model, bias=use_bias)
        self.dropout = nn.Dropout(dropout)
        self.tile = AttentionTile()

    def _heads(self, t):
        batch, length, _ = t.shape
        return t.view(batch, length, self.num_heads, self.key_dim).transpose(1, 2)

    def forward(self, x, key_mask=None):
        """key_mask: bool [batch, key], False at padding (token id 0); used when mask_padding."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        # Scale the queries, not the scores (as Keras does): no second [batch, head, q, k] tensor.
        q = q * (1.0 / math.sqrt(self.key_dim))
        k = k.transpose(-1, -2)
        keys = key_mask[:, None, None, :] if self.mask_padding and key_mask is not None else None
        batch, length = x.shape[0], x.shape[1]
        rows = tile_rows(batch, self.num_heads, length, length, self.tile_elements)
        if rows >= length:
            probs = self.tile(self._probabilities(q, k, keys, 0), 0, length, length)
            context = torch.matmul(self.dropout(probs), v)
        else:
            probs, context = None, torch.empty_like(v)
            for start in range(0, length, rows):
                stop = min(length, start + rows)
                tile = self._probabilities(q[:, :, start:stop], k, keys, start)
                tile = self.tile(tile, start, length, rows)
                context[:, :, start:stop] = torch.matmul(self.dropout(tile), v)
                del tile
        return self.output(context.transpose(1, 2).flatten(2)), probs

    def _probabilities(self, q, k, keys, start):
        """softmax over all keys of query rows start.. (q: those rows, scaled; k: transposed)."""
        scores = torch.matmul(q, k)  # [batch, head, rows, key]
        allowed = None
        if self.causal:
            rows, length = scores.shape[-2:]
            positions = torch.arange(start, start + rows, device=q.device)
            allowed = torch.arange(length, device=q.device)[None, :] <= positions[:, None]
        if keys is not None:
            allowed = keys if allowed is None else (allowed & keys)
        # In inference the mask and the softmax work in place, so one scores tensor exists at a
        # time: that is what lets long sequences fit. Autograd needs copies.
        inplace = torch.is_inference_mode_enabled()
        if allowed is not None:
            # Keras's rule, kept for parity: a masked score becomes -1e9 before the softmax and
            # its probability exactly 0 after it (a row with no key left to attend is all 0).
            fill = scores.masked_fill_ if inplace else scores.masked_fill
            scores = fill(~allowed, -1e9)
        if inplace:
            # ATen's softmax written over its input: torch.softmax's numbers, one pass fewer
            # than max/exp/sum/divide in place (4 ms less per 8 x 1,024² layer on 2 cores).
            probs = torch.ops.aten._softmax.out(scores, -1, False, out=scores)
            if allowed is not None:
                probs.masked_fill_(~allowed, 0.0)
            return probs
        probs = torch.softmax(scores, dim=-1)
        return probs if allowed is None else probs.masked_fill(~allowed, 0.0)


class TransformerEncoderBlock(nn.Module):
    """Post-norm transformer encoder block; see the module docstring."""

    def __init__(
        self,
        d_model,
        num_heads,
        ff_dim,
        dropout=0.1,
        activation="relu",
        causal=False,
        mask_padding=False,
        norm_first=False,
        epsilon=ENCODER_NORM_EPSILON,
    ):
        super().__init__()
        self.norm_first = norm_first
        self.attention = SelfAttention(
            d_model, num_heads, d_model // num_heads, dropout, causal, mask_padding=mask_padding
        )
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(d_model, eps=epsilon)
        self.ffn_1 = Dense(d_model, ff_dim, activation)
        self.ffn_2 = Dense(ff_dim, d_model)
        self.ffn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=epsilon)

    def forward(self, x, key_mask=None):
        if self.norm_first:
            a, probs = self.attention(self.attention_norm(x), key_mask)
            x = x + self.attention_dropout(a)
            return x + self.ffn_dropout(self.ffn_2(self.ffn_1(self.ffn_norm(x)))), probs
        a, probs = self.attention(x, key_mask)
        x = self.attention_norm(x + self.attention_dropout(a))
        x = self.ffn_norm(x + self.ffn_dropout(self.ffn_2(self.ffn_1(x))))
        return x, probs


class TransformerDecoderBlock(TransformerEncoderBlock):
    """Decoder-only block: the encoder block with causal self-attention."""

    def __init__(
        self,
        d_model,
        num_heads,
        ff_dim,
        dropout=0.1,
        activation="relu",
        mask_padding=False,
        norm_first=False,
        epsilon=ENCODER_NORM_EPSILON,
    ):
        super().__init__(
            d_model, num_heads, ff_dim, dropout, activation, True, mask_padding, norm_first, epsilon
        )


class Activation(nn.Module):
    def __init__(self, activation=None):
        super().__init__()
        self.activation = activation

    def forward(self, x):
        return ACTIVATIONS[self.activation](x)


class BatchNormalization(nn.Module):
    """Keras BatchNormalization over the last axis.

    The moving statistics are parameters that take no gradient (not buffers), so that
    `parameters()` counts what Keras's `count_params()` counts. Eval mode uses them; train
    mode uses the batch's statistics and updates them as Keras does:
    moving = moving * momentum + batch * (1 - momentum).
    """

    def __init__(self, num_features, momentum=0.99, epsilon=1e-3):
        super().__init__()
        self.momentum = momentum
        self.epsilon = epsilon
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.moving_mean = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.moving_variance = nn.Parameter(torch.ones(num_features), requires_grad=False)

    def forward(self, x):
        if self.training:
            axes = tuple(range(x.dim() - 1))
            mean, var = x.mean(dim=axes), x.var(dim=axes, unbiased=False)
            with torch.no_grad():
                self.moving_mean.mul_(self.momentum).add_(mean * (1 - self.momentum))
                self.moving_variance.mul_(self.momentum).add_(var * (1 - self.momentum))
        else:
            mean, var = self.moving_mean, self.moving_variance
        return (x - mean) * torch.rsqrt(var + self.epsilon) * self.gamma + self.beta


def sinusoid_table(length, width, device=None):
    """sin/cos positional table (length, width), float32; even columns sin, odd cos.

    pe[p, 2i] = sin(p / 10000^(2i/width)), pe[p, 2i+1] = cos(p / 10000^(2i/width)); computed in
    float64 and rounded once, so both backends give the same float32 values.
    """
    half = math.ceil(width / 2)
    steps = torch.arange(half, dtype=torch.float64, device=device)
    inv_freq = torch.pow(torch.tensor(10000.0, dtype=torch.float64), -2.0 * steps / width)
    angles = torch.arange(length, dtype=torch.float64, device=device)[:, None] * inv_freq[None]
    table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)
    return table.reshape(length, 2 * half)[:, :width].float()


class PositionalEncoding(nn.Module):
    """x + pe[:seq]: a fixed sinusoid table, or a learned one of max_len rows (`embeddings`)."""

    def __init__(self, d_model, max_len=None, kind="sinusoidal"):
        super().__init__()
        self.d_model = d_model
        self.max_len = max_len
        self.kind = kind
        if kind == "learned":
            self.embeddings = nn.Parameter(torch.zeros(max_len, d_model))

    def forward(self, x):
        length = x.shape[1]
        if self.kind == "learned":
            pe = self.embeddings[:length]
        else:
            pe = sinusoid_table(length, self.d_model, x.device)
        return x + pe.to(x.dtype)


class Residual(nn.Module):
    """out = body(x) + x, or body(x) + projection(x) where the projection is the last layer.

    `layers` are (name, module) pairs of the body in order; with shortcut="projection" the
    last of them is applied to the block's input instead (e.g. a strided 1x1 Conv2D).
    """

    def __init__(self, layers, shortcut="identity"):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.shortcut = shortcut

    def forward(self, x, key_mask=None, capture=None):
        body = list(self.layers.items())
        main = body[:-1] if self.shortcut == "projection" else body
        y = x
        for name, layer in main:
            y = apply(name, layer, y, key_mask, capture)
        if self.shortcut == "projection":
            return y + apply(*body[-1], x, key_mask, capture)
        return y + x


class GlobalAveragePooling1D(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class GlobalMaxPooling1D(nn.Module):
    def forward(self, x):
        return x.amax(dim=1)


ATTENTION_BLOCKS = (SelfAttention, TransformerEncoderBlock)


def apply(name, block, x, key_mask=None, capture=None):
    """Run one block; attention blocks (also inside residual blocks) store their
    probabilities [batch, head, query, key] in `capture` under their layer name."""
    if isinstance(block, ATTENTION_BLOCKS):
        x, probs = block(x, key_mask)
        if capture is not None and probs is not None:  # None: the layer went by in tiles
            capture[name] = probs
        return x
    if isinstance(block, Residual):
        return block(x, key_mask, capture)
    return block(x)


class NeuralNet(nn.Module):
    """The layers of a .neural network, applied in order (names are the DSL's layer names).

    `run` is the one forward pass: with `capture` (a dict) it also stores the attention
    probabilities of every attention block under its name, shape [batch, head, q, k].
    `start` skips leading layers (an Embedding, when the input is already embedded).
    """

    def __init__(self, named_layers):
        super().__init__()
        self.blocks = nn.ModuleDict(named_layers)

    def run(self, x, *, capture=None, start=0, should_stop=None):
        """The forward pass; returns None, early, as soon as `should_stop()` is true."""
        blocks = list(self.blocks.items())
        key_mask = None
        if start == 0 and blocks and isinstance(blocks[0][1], nn.Embedding):
            key_mask = x != 0  # token id 0 is padding
        for name, block in blocks[start:]:
            if should_stop is not None and should_stop():
                return None
            x = apply(name, block, x, key_mask, capture)
        return x

    def forward(self, x):
        return self.run(x)
