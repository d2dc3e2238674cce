"""PyTorch recurrent layers with Keras 3 semantics and parameter counts.

Copied verbatim into `compiled_model_pytorch.py`; it imports only torch.

Input (batch, steps, features); output (batch, steps, units) with return_sequences, else the
last step (batch, units). The initial state is zero.

- LSTM: Keras has one bias per gate where nn.LSTM has two (bias_ih and bias_hh), which would
  change the parameter count, so the cell is written out: gates i, f, g, o (Keras's i, f, c, o),
  c = f * c + i * tanh(g), h = o * tanh(c).
- GRU: Keras 3's default (reset_after=True) is exactly nn.GRU: two biases, and the reset gate
  applied to the recurrent term. Only the gate order differs (Keras z, r, h; torch r, z, n);
  the weight conversion handles it.
- SimpleRNN: one bias (nn.RNN has two), h = tanh(x W + h U + b).
"""

import torch
from torch import nn


class _Recurrent(nn.Module):
    def __init__(self, gates, input_size, units, return_sequences):
        super().__init__()
        self.units = units
        self.return_sequences = return_sequences
        self.weight_ih = nn.Parameter(torch.zeros(gates * units, input_size))
        self.weight_hh = nn.Parameter(torch.zeros(gates * units, units))
        self.bias = nn.Parameter(torch.zeros(gates * units))

    def forward(self, x):
        projected = torch.matmul(x, self.weight_ih.T) + self.bias  # all steps at once
        h = x.new_zeros(x.shape[0], self.units)
        state = self.initial_state(h)
        outputs = []
        for t in range(x.shape[1]):
            h, state = self.step(projected[:, t], h, state)
            outputs.append(h)
        return torch.stack(outputs, dim=1) if self.return_sequences else h


class LSTM(_Recurrent):
    def __init__(self, input_size, units, return_sequences=False):
        super().__init__(4, input_size, units, return_sequences)

    def initial_state(self, h):
        return torch.zeros_like(h)

    def step(self, projected, h, c):
        i, f, g, o = (projected + torch.matmul(h, self.weight_hh.T)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class SimpleRNN(_Recurrent):
    def __init__(self, input_size, units, return_sequences=False):
        super().__init__(1, input_size, units, return_sequences)

    def initial_state(self, h):
        return None

    def step(self, projected, h, state):
        return torch.tanh(projected + torch.matmul(h, self.weight_hh.T)), state


class GRU(nn.Module):
    def __init__(self, input_size, units, return_sequences=False):
        super().__init__()
        self.return_sequences = return_sequences
        self.gru = nn.GRU(input_size, units, batch_first=True)

    def forward(self, x):
        out, _ = self.gru(x)
        return out if self.return_sequences else out[:, -1]
