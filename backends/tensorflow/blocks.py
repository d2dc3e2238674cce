"""Keras 3 building blocks of neural-attn models.

This file is self-contained on purpose (it imports only keras, numpy and the standard library):
the code generator copies it verbatim into `compiled_model_tensorflow.py`, so the model a user
reads is the model we run.

TransformerEncoder block (the documented architecture, identical in the PyTorch backend):
    a, p = SelfAttention(x)          # p: softmax(Q K^T / sqrt(key_dim)), [batch, head, q, k]
    x = LayerNorm_1(x + Dropout(a))  # epsilon: the block's, 1e-6 by default
    f = Dense(d)(act(Dense(ff_dim)(x)))
    x = LayerNorm_2(x + Dropout(f))
With norm_first (pre-norm, GPT-2's order) the norms come before each sub-layer instead:
    a, p = SelfAttention(LayerNorm_1(x)); x = x + Dropout(a)
    x = x + Dropout(Dense(d)(act(Dense(ff_dim)(LayerNorm_2(x)))))

TransformerDecoder block (decoder-only): the same block with causal self-attention, so query i
attends to keys 0..i only and the probabilities above the diagonal are exactly 0.

Every other layer is Keras's own (Conv1D/2D, pooling, BatchNormalization, LSTM, GRU,
SimpleRNN, ...), data channels-last, plus ResidualBlock and PositionalEncoding below.
"""

import functools
import math

import keras
import numpy as np

ENCODER_NORM_EPSILON = 1e-6  # the blocks' default epsilon


def gelu_tanh(x):
    """GPT-2's GELU ("gelu_new"), the tanh approximation; Keras's "gelu" is the exact one."""
    return keras.activations.gelu(x, approximate=True)


def activation(name):
    """The Keras activation for a .neural activation name: Keras's own, or gelu_tanh."""
    return gelu_tanh if name == "gelu_tanh" else name


# Query rows per tile are chosen so one tile's scores hold at most this many values (64 MiB of
# float32): a long layer is computed a tile of query rows at a time, each row's softmax over
# all its keys, so memory per layer is O(rows x keys), never O(keys^2). Short ones are one tile.
# Each tile is a call from Python (a graph where the backend compiled `tile`), so fewer, larger
# ones are faster here: at 2 x 8 x 4,096² on 2 cores, 0.71 s a pass with 64 MiB tiles against
# 0.73 s with whole layers (bench section 6); 16 MiB tiles took 0.83 to 1.02 s.
TILE_ELEMENTS = 1 << 24


def tile_rows(batch, heads, queries, keys, budget=TILE_ELEMENTS):
    """Query rows per tile: as many as keep batch x heads x rows x keys within `budget`."""
    return max(1, min(queries, budget // max(1, batch * heads * keys)))


class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention that can hand back its per-head probabilities.

    A layer longer than one tile (`tiled`) is computed a tile of query rows at a time, in
    Keras's own order of operations, and each tile of probabilities [batch, head, rows, key]
    goes to `tiles(start, probs, queries, step)` instead of being returned.
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        dropout=0.0,
        causal=False,
        use_bias=True,
        mask_padding=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.causal = causal
        self.use_bias = use_bias
        self.mask_padding = mask_padding
        self.tile_elements = TILE_ELEMENTS
        # Keras 3 only materializes the probabilities when asked at call time
        # (return_attention_scores=True); we always ask when capturing.
        self.mha = keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=key_dim, dropout=dropout, use_bias=use_bias, name="mha"
        )

    def build(self, input_shape):
        self.mha.build(input_shape, input_shape)
        self.built = True

    def tile_rows(self, x):
        """Query rows per tile for input x (its whole length when the layer is one tile)."""
        batch, length = x.shape[0], x.shape[1]
        if batch is None or length is None:  # a shape-generic trace: never tiled
            return length
        return tile_rows(batch, self.num_heads, length, length, self.tile_elements)

    def tiled(self, x):
        return x.shape[1] is not None and self.tile_rows(x) < x.shape[1]

    def call(self, x, key_mask=None, training=False, return_attention_scores=False, tiles=None):
        """key_mask: bool [batch, key], False at padding (token id 0); used when mask_padding."""
        if self.tiled(x):
            out = self._tiles(x, key_mask, training, tiles)
            return (out, None) if return_attention_scores else out
        attention_mask = None
        if self.mask_padding and key_mask is not None:
            # [batch, query, key]: no query attends to a padding key. Keras sets masked scores
            # to -1e9, so they are exactly 0 after the softmax.
            attention_mask = keras.ops.logical_and(
                key_mask[:, None, :], keras.ops.ones_like(key_mask)[:, :, None]
            )
        out, probs = self.mha(
            x,
            x,
            attention_mask=attention_mask,
            use_causal_mask=self.causal,
            training=training,
            return_attention_scores=True,
        )
        return (out, probs) if return_attention_scores else out

    def _tiles(self, x, key_mask, training, tiles):
        """The layer a tile of query rows at a time: MultiHeadAttention's own projections,
        equations, masked softmax and output projection, on rows start..stop each."""
        mha, ops = self.mha, keras.ops
        query, key, value = (getattr(self, "compiled_project", None) or self.project)(x)
        length, rows = x.shape[1], self.tile_rows(x)
        keys = key_mask[:, None, :] if self.mask_padding and key_mask is not None else None
        tile = getattr(self, "compiled_tile", None) or self.tile
        contexts = []
        for start in range(0, length, rows):
            probs, context = tile(
                query[:, start : start + rows], key, value, keys, ops.array(start), training
            )
            if tiles is not None:
                tiles(start, probs, length, rows)
            del probs
            contexts.append(context)
        return mha._output_dense(ops.concatenate(contexts, axis=1))

    def project(self, x):
        """The scaled queries, the keys and the values of x, [batch, length, head, key_dim]."""
        mha = self.mha
        query = keras.ops.multiply(mha._query_dense(x), 1.0 / math.sqrt(float(self.key_dim)))
        return query, mha._key_dense(x), mha._value_dense(x)

    def tile(self, query, key, value, keys, start, training=False):
        """One tile: the probabilities [batch, head, rows, key] of the (scaled) `query` rows
        that begin at row `start`, and their context rows. `keys`: the padding mask
        [batch, 1, key] or None."""
        mha, ops = self.mha, keras.ops
        scores = ops.einsum(mha._dot_product_equation, key, query)
        mask = keys
        if self.causal:  # key j is allowed for query i when j <= i
            rows = ops.shape(query)[1]
            causal = ops.arange(ops.shape(key)[1])[None, :] <= (start + ops.arange(rows))[:, None]
            mask = causal[None] if mask is None else ops.logical_and(mask, causal[None])
        probs = mha._masked_softmax(scores, mask)
        dropped = mha._dropout_layer(probs, training=training)
        return probs, ops.einsum(mha._combine_equation, dropped, value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            causal=self.causal,
            use_bias=self.use_bias,
            mask_padding=self.mask_padding,
        )
        return config


class TransformerEncoderBlock(keras.layers.Layer):
    """Post-norm transformer encoder block; see the module docstring."""

    def __init__(
        self,
        num_heads,
        ff_dim,
        dropout=0.1,
        activation="relu",
        causal=False,
        mask_padding=False,
        norm_first=False,
        epsilon=ENCODER_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.activation = activation
        self.causal = causal
        self.mask_padding = mask_padding
        self.norm_first = norm_first
        self.epsilon = epsilon

    def build(self, input_shape):
        d_model = input_shape[-1]
        self.attention = SelfAttention(
            self.num_heads,
            d_model // self.num_heads,
            self.dropout,
            self.causal,
            mask_padding=self.mask_padding,
            name="attention",
        )
        self.attention_dropout = keras.layers.Dropout(self.dropout)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, name="attention_norm"
        )
        self.ffn_1 = keras.layers.Dense(
            self.ff_dim, activation=activation(self.activation), name="ffn_1"
        )
        self.ffn_2 = keras.layers.Dense(d_model, name="ffn_2")
        self.ffn_dropout = keras.layers.Dropout(self.dropout)
        self.ffn_norm = keras.layers.LayerNormalization(epsilon=self.epsilon, name="ffn_norm")
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        self.ffn_1.build(input_shape)
        self.ffn_2.build((*input_shape[:-1], self.ff_dim))
        self.ffn_norm.build(input_shape)
        self.built = True

    def call(self, x, key_mask=None, training=False, return_attention_scores=False, tiles=None):
        a, probs = self.attention(
            self.attention_norm(x) if self.norm_first else x,
            key_mask=key_mask,
            training=training,
            return_attention_scores=True,
            tiles=tiles,
        )
        x = (getattr(self, "compiled_rest", None) or self.rest)(x, a, training=training)
        return (x, probs) if return_attention_scores else x

    def rest(self, x, a, training=False):
        """The block after its attention: x the block's input, a the attention's output."""
        if self.norm_first:
            x = x + self.attention_dropout(a, training=training)
            f = self.ffn_2(self.ffn_1(self.ffn_norm(x)))
            return x + self.ffn_dropout(f, training=training)
        x = self.attention_norm(x + self.attention_dropout(a, training=training))
        f = self.ffn_2(self.ffn_1(x))
        return self.ffn_norm(x + self.ffn_dropout(f, training=training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            activation=self.activation,
            causal=self.causal,
            mask_padding=self.mask_padding,
            norm_first=self.norm_first,
            epsilon=self.epsilon,
        )
        return config


class TransformerDecoderBlock(TransformerEncoderBlock):
    """Decoder-only block: the encoder block with causal self-attention."""

    def __init__(self, num_heads, ff_dim, dropout=0.1, activation="relu", **kwargs):
        kwargs.pop("causal", None)
        super().__init__(num_heads, ff_dim, dropout, activation, causal=True, **kwargs)


ATTENTION_BLOCKS = (SelfAttention, TransformerEncoderBlock)


def sinusoid_table(length, width):
    """sin/cos positional table (length, width), float32; even columns sin, odd cos.

    pe[p, 2i] = sin(p / 10000^(2i/width)), pe[p, 2i+1] = cos(p / 10000^(2i/width)); computed in
    float64 and rounded once, so both backends give the same float32 values.
    """
    half = math.ceil(width / 2)
    inv_freq = np.power(10000.0, -2.0 * np.arange(half, dtype=np.float64) / width)
    angles = keras.ops.arange(length, dtype="float64")[:, None] * inv_freq[None, :]
    table = keras.ops.stack([keras.ops.sin(angles), keras.ops.cos(angles)], axis=-1)
    return keras.ops.cast(keras.ops.reshape(table, (length, 2 * half))[:, :width], "float32")


class PositionalEncoding(keras.layers.Layer):
    """x + pe[:seq]: a fixed sinusoid table, or a learned one of max_len rows (`embeddings`)."""

    def __init__(self, max_len=None, kind="sinusoidal", **kwargs):
        super().__init__(**kwargs)
        self.max_len = max_len
        self.kind = kind

    def build(self, input_shape):
        if self.kind == "learned":
            self.embeddings = self.add_weight(
                name="embeddings", shape=(self.max_len, input_shape[-1]), initializer="zeros"
            )
        self.built = True

    def call(self, x):
        length = keras.ops.shape(x)[1]
        if self.kind == "learned":
            pe = keras.ops.convert_to_tensor(self.embeddings)[:length]
        else:
            pe = sinusoid_table(length, x.shape[-1])
        return x + keras.ops.cast(pe, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_len=self.max_len, kind=self.kind)
        return config


class ResidualBlock(keras.layers.Layer):
    """out = body(x) + x, or body(x) + projection(x) where the projection is the last layer.

    `layers` are the body's layers in order; with shortcut="projection" the last of them is
    applied to the block's input instead (e.g. a strided 1x1 Conv2D).
    """

    def __init__(self, layers, shortcut="identity", **kwargs):
        super().__init__(**kwargs)
        self.body = list(layers)
        self.shortcut = shortcut

    @property
    def _main(self):
        return self.body[:-1] if self.shortcut == "projection" else self.body

    def build(self, input_shape):
        shape = input_shape
        for layer in self._main:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.shortcut == "projection":
            self.body[-1].build(input_shape)
        self.built = True

    def run(self, x, *, key_mask=None, capture=None, training=False):
        """The block's pass; attention inside it is captured like any other (see `apply`)."""
        if not self.built:
            self.build(tuple(x.shape))
        y = x
        for layer in self._main:
            y = apply(layer, y, key_mask=key_mask, capture=capture, training=training)
        if self.shortcut == "projection":
            shortcut = apply(
                self.body[-1], x, key_mask=key_mask, capture=capture, training=training
            )
            return y + shortcut
        return y + x

    def call(self, x, training=False):
        return self.run(x, training=training)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self._main:
            shape = layer.compute_output_shape(shape)
        return shape


def apply(block, x, *, key_mask=None, capture=None, training=False):
    """Run one block; attention blocks (also inside residual blocks) store their
    probabilities [batch, head, query, key] in `capture` under their layer name. A layer
    longer than one tile runs eagerly, and hands each tile to `capture.tile(name, start,
    probs, queries, step)` when the capture has one (its probabilities are never whole)."""
    if isinstance(block, ATTENTION_BLOCKS):
        gate = getattr(capture, "gate", None)
        if gate is not None:  # a stream may hold the pass here until the last layer is let go
            gate()
        if _tiled(block, x):
            tile = getattr(capture, "tile", None)
            tiles = None if tile is None else functools.partial(tile, block.name)
            return block(x, key_mask=key_mask, training=training, tiles=tiles)
        x, probs = _call(block)(
            x, key_mask=key_mask, training=training, return_attention_scores=True
        )
        if capture is not None:
            capture[block.name] = probs
        return x
    if isinstance(block, ResidualBlock):
        return block.run(x, key_mask=key_mask, capture=capture, training=training)
    return _call(block)(x, training=training)


def _tiled(block, x):
    """Whether an attention block computes input x in more than one tile (a block not built
    yet has no attention to ask, and builds on one piece)."""
    attention = block if isinstance(block, SelfAttention) else getattr(block, "attention", None)
    return attention is not None and attention.tiled(x)


def _call(block):
    """The block, or its `compiled_call` where the backend compiled it (a tf.function of the
    block's whole call, so Keras's per-call bookkeeping is paid once, when it is traced)."""
    return getattr(block, "compiled_call", None) or block


class NeuralModel(keras.Model):
    """The layers of a .neural network, applied in order.

    `run` is the one forward pass: with `capture` (a dict) it also stores the attention
    probabilities of every attention block under the block's name, shape [batch, head, q, k].
    `start` skips leading layers (an Embedding, when the input is already embedded).
    """

    def __init__(self, blocks, **kwargs):
        super().__init__(**kwargs)
        self.blocks = list(blocks)

    def run(self, x, *, capture=None, start=0, training=False, should_stop=None):
        """The forward pass; returns None, early, as soon as `should_stop()` is true."""
        key_mask = self.key_mask(x, start)
        for block in self.blocks[start:]:
            if should_stop is not None and should_stop():
                return None
            x = apply(block, x, key_mask=key_mask, capture=capture, training=training)
        return x

    def key_mask(self, x, start=0):
        """Where the token ids `x` are not padding (id 0), when the pass starts at an Embedding."""
        if start == 0 and self.blocks and isinstance(self.blocks[0], keras.layers.Embedding):
            return keras.ops.not_equal(x, 0)
        return None

    def call(self, x, training=False):
        return self.run(x, training=training)
