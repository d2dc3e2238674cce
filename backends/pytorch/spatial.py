"""PyTorch convolutions and pooling with Keras semantics on channels-last data.

Copied verbatim into `compiled_model_pytorch.py` after blocks.py (whose ACTIVATIONS it
uses), so it imports only torch besides that.

Inputs and outputs are channels-last like Keras: (batch, steps, channels) for the 1D layers,
(batch, H, W, C) for the 2D ones; each layer permutes to torch's channels-first inside itself.
padding="same" is TensorFlow's: out = ceil(n / stride), the padding split with the extra cell
after (torch's own padding="same" refuses strides). Average pooling leaves padded cells out of
the mean, as Keras does; max pooling pads with -inf.
"""

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from neural_attn.backends.pytorch.blocks import ACTIVATIONS  # codegen: sibling


def same_padding(sizes, window, strides):
    """F.pad amounts (last axis first) for TensorFlow's "same" padding of `sizes`."""
    pads = []
    for n, k, s in zip(reversed(sizes), reversed(window), reversed(strides), strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _channels_first(x):
    return x.movedim(-1, 1)


def _channels_last(x):
    return x.movedim(1, -1)


class _Conv(nn.Module):
    def __init__(self, dims, in_channels, filters, kernel_size, strides, padding, activation):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv = conv(in_channels, filters, tuple(kernel_size), stride=tuple(strides))
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.padding = padding
        self.activation = activation

    def forward(self, x):
        x = _channels_first(x)
        if self.padding == "same":
            x = F.pad(x, same_padding(x.shape[2:], self.kernel_size, self.strides))
        return ACTIVATIONS[self.activation](_channels_last(self.conv(x)))


class Conv1D(_Conv):
    def __init__(
        self, in_channels, filters, kernel_size, strides=(1,), padding="valid", activation=None
    ):
        super().__init__(1, in_channels, filters, kernel_size, strides, padding, activation)


class Conv2D(_Conv):
    def __init__(
        self, in_channels, filters, kernel_size, strides=(1, 1), padding="valid", activation=None
    ):
        super().__init__(2, in_channels, filters, kernel_size, strides, padding, activation)


class _Pool(nn.Module):
    def __init__(self, kind, pool_size, strides=None, padding="valid"):
        super().__init__()
        self.kind = kind
        self.pool_size = tuple(pool_size)
        self.strides = tuple(strides) if strides is not None else self.pool_size
        self.padding = padding

    def _pool(self, x):
        dims = len(self.pool_size)
        if self.kind == "max":
            pool = F.max_pool1d if dims == 1 else F.max_pool2d
        else:
            pool = F.avg_pool1d if dims == 1 else F.avg_pool2d
        return pool(x, self.pool_size, self.strides)

    def forward(self, x):
        x = _channels_first(x)
        if self.padding == "same":
            pads = same_padding(x.shape[2:], self.pool_size, self.strides)
            if self.kind == "max":
                x = F.pad(x, pads, value=float("-inf"))
            else:
                # mean over the real cells only: (sum / area) / (count / area)
                ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
                x = self._pool(F.pad(x, pads)) / self._pool(F.pad(ones, pads))
                return _channels_last(x)
        return _channels_last(self._pool(x))


class MaxPooling1D(_Pool):
    def __init__(self, pool_size, strides=None, padding="valid"):
        super().__init__("max", pool_size, strides, padding)


class MaxPooling2D(_Pool):
    def __init__(self, pool_size, strides=None, padding="valid"):
        super().__init__("max", pool_size, strides, padding)


class AveragePooling1D(_Pool):
    def __init__(self, pool_size, strides=None, padding="valid"):
        super().__init__("average", pool_size, strides, padding)


class AveragePooling2D(_Pool):
    def __init__(self, pool_size, strides=None, padding="valid"):
        super().__init__("average", pool_size, strides, padding)


class GlobalAveragePooling2D(nn.Module):
    def forward(self, x):
        return x.mean(dim=(1, 2))


class GlobalMaxPooling2D(nn.Module):
    def forward(self, x):
        return x.amax(dim=(1, 2))
