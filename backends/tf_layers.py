"""Keras 3 building blocks of neural-attn models.

This file is self-contained on purpose (it imports only keras): the code generator copies it
verbatim into `compiled_model_tensorflow.py`, so the model a user reads is the model we run.

TransformerEncoder block (the documented architecture, identical in the PyTorch backend):
    a, p = SelfAttention(x)          # p: softmax(Q K^T / sqrt(key_dim)), [batch, head, q, k]
    x = LayerNorm_1(x + Dropout(a))  # epsilon 1e-6
    f = Dense(d)(act(Dense(ff_dim)(x)))
    x = LayerNorm_2(x + Dropout(f))  # epsilon 1e-6
"""

import keras

ENCODER_NORM_EPSILON = 1e-6


class SelfAttention(keras.layers.Layer):
    """Multi-head self-attention that can hand back its per-head probabilities."""

    def __init__(self, num_heads, key_dim, dropout=0.0, causal=False, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.causal = causal
        self.use_bias = use_bias
        # Keras 3 only materializes the probabilities when asked at call time
        # (return_attention_scores=True); we always ask when capturing.
        self.mha = keras.layers.MultiHeadAttention(
            num_heads=num_heads, key_dim=key_dim, dropout=dropout, use_bias=use_bias, name="mha"
        )

    def build(self, input_shape):
        self.mha.build(input_shape, input_shape)
        self.built = True

    def call(self, x, attention_mask=None, training=False, return_attention_scores=False):
        out, probs = self.mha(
            x,
            x,
            attention_mask=attention_mask,
            use_causal_mask=self.causal,
            training=training,
            return_attention_scores=True,
        )
        return (out, probs) if return_attention_scores else out

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
        )
        return config


class TransformerEncoderBlock(keras.layers.Layer):
    """Post-norm transformer encoder block; see the module docstring."""

    def __init__(self, num_heads, ff_dim, dropout=0.1, activation="relu", causal=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.activation = activation
        self.causal = causal

    def build(self, input_shape):
        d_model = input_shape[-1]
        self.attention = SelfAttention(
            self.num_heads, d_model // self.num_heads, self.dropout, self.causal, name="attention"
        )
        self.attention_dropout = keras.layers.Dropout(self.dropout)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=ENCODER_NORM_EPSILON, name="attention_norm"
        )
        self.ffn_1 = keras.layers.Dense(self.ff_dim, activation=self.activation, name="ffn_1")
        self.ffn_2 = keras.layers.Dense(d_model, name="ffn_2")
        self.ffn_dropout = keras.layers.Dropout(self.dropout)
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=ENCODER_NORM_EPSILON, name="ffn_norm"
        )
        self.attention.build(input_shape)
        self.attention_norm.build(input_shape)
        self.ffn_1.build(input_shape)
        self.ffn_2.build((*input_shape[:-1], self.ff_dim))
        self.ffn_norm.build(input_shape)
        self.built = True

    def call(self, x, attention_mask=None, training=False, return_attention_scores=False):
        a, probs = self.attention(
            x, attention_mask=attention_mask, training=training, return_attention_scores=True
        )
        x = self.attention_norm(x + self.attention_dropout(a, training=training))
        f = self.ffn_2(self.ffn_1(x))
        x = self.ffn_norm(x + self.ffn_dropout(f, training=training))
        return (x, probs) if return_attention_scores else x

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
        )
        return config


ATTENTION_BLOCKS = (SelfAttention, TransformerEncoderBlock)


class NeuralModel(keras.Model):
    """The layers of a .neural network, applied in order.

    `run` is the one forward pass: with `capture` (a dict) it also stores the attention
    probabilities of every attention block under the block's name, shape [batch, head, q, k].
    `start` skips leading layers (an Embedding, when the input is already embedded).
    """

    def __init__(self, blocks, **kwargs):
        super().__init__(**kwargs)
        self.blocks = list(blocks)

    def run(self, x, *, capture=None, start=0, attention_mask=None, training=False):
        for block in self.blocks[start:]:
            if isinstance(block, ATTENTION_BLOCKS):
                x, probs = block(
                    x,
                    attention_mask=attention_mask,
                    training=training,
                    return_attention_scores=True,
                )
                if capture is not None:
                    capture[block.name] = probs
            else:
                x = block(x, training=training)
        return x

    def call(self, x, training=False):
        return self.run(x, training=training)
