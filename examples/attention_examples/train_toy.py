"""Train the toy models in `trained/` on tasks whose correct attention is known.

Each `trained/{task}.neural` is compiled by a neural-attn server (the embedded one unless
--server is given); the server's generated PyTorch code (`compiled_model_pytorch.py`, the
`generated_code` of the Compile response) is loaded and its `create_model()` trained here. The
trained `state_dict` goes back through the server (`export_weights`), which writes it as neutral
`.npz` weights that load into either backend:

    previous_token  y[i] = x[i - 1] (y[0] = x[0])  -> a previous-token head ("local")
    first_token     y[i] = x[0]                     -> a first-token head ("prefix_suffix")
    reverse         y[i] = x[n - 1 - i]             -> an anti-diagonal head ("sparse")
    previous_and_first  y[i] = 2 x[i - 1] + x[0] mod 2  -> one head of each kind; the
                    previous-token head carries most of the output, the first-token head 1 bit

In the one-task models both heads learn the task (similarity finds them redundant); in
previous_and_first they split the work, and ablation ranks the previous-token head first.

Seeded and small: all three train in well under a minute on 2 CPU cores.

    python examples/attention_examples/train_toy.py [--task previous_token] [--server host:port]
"""

from __future__ import annotations

import argparse
import io
import time
import types
from pathlib import Path

import numpy as np
import torch

from neural_attn.client import AttentionClient
from neural_attn.client._embedded import embedded_target

HERE = Path(__file__).resolve().parent / "trained"
VOCAB, LENGTH = 16, 12
TASKS = ("previous_token", "first_token", "reverse", "previous_and_first")
OUTPUTS = {"previous_and_first": 2 * VOCAB}  # output units where they are not VOCAB
# Adam steps of 64 sequences; splitting two jobs between the heads takes longer.
STEPS = {"previous_token": 100, "first_token": 100, "reverse": 100, "previous_and_first": 800}


def targets(task: str, x: np.ndarray) -> np.ndarray:
    """The output each task asks for, from token ids x (batch, length)."""
    if task == "previous_token":
        return np.concatenate([x[:, :1], x[:, :-1]], axis=1)
    if task == "first_token":
        return np.repeat(x[:, :1], x.shape[1], axis=1)
    if task == "reverse":
        return x[:, ::-1].copy()
    if task == "previous_and_first":
        return 2 * targets("previous_token", x) + targets("first_token", x) % 2
    raise ValueError(task)


def target_pattern(task: str, length: int = LENGTH) -> np.ndarray:
    """The (query, key) attention a head doing a one-head task has: one 1 per row."""
    x = np.arange(length)[None]
    pattern = np.zeros((length, length))
    pattern[np.arange(length), targets(task, x)[0]] = 1.0
    return pattern


def sample(rng: np.random.Generator, batch: int) -> np.ndarray:
    return rng.integers(1, VOCAB, size=(batch, LENGTH), dtype=np.int64)


def load_generated(code: str) -> types.ModuleType:
    """The server's generated module, loaded as a module (the file a user gets)."""
    module = types.ModuleType("compiled_model_pytorch")
    exec(compile(code, "compiled_model_pytorch.py", "exec"), module.__dict__)  # noqa: S102
    return module


def train(
    client: AttentionClient, task: str, *, seed: int, steps: int, output_dir: Path = HERE
) -> dict[str, float]:
    path = HERE / f"{task}.neural"
    source = path.read_text(encoding="utf-8")
    compiled = client.compile(source, filename=path.name, backend="pytorch", seed=seed)
    torch.manual_seed(seed)
    model = load_generated(compiled.generated_code).create_model()
    for p in model.parameters():  # a seeded start that does not depend on torch's defaults
        if p.dim() > 1:
            torch.nn.init.xavier_uniform_(p)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x = sample(rng, 64)
        probs = model(torch.from_numpy(x))  # (batch, length, vocab): the Output softmax
        y = torch.from_numpy(targets(task, x))
        loss = torch.nn.functional.nll_loss(
            torch.log(probs.clamp_min(1e-9)).reshape(-1, OUTPUTS.get(task, VOCAB)), y.reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    x = sample(rng, 256)
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(x)).argmax(-1).numpy() == targets(task, x)).mean())
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    neutral = client.export_weights(
        source,
        filename=path.name,
        backend="pytorch",
        weights=state.getvalue(),
        weights_format="torch",
    )
    (output_dir / f"{task}.npz").write_bytes(neutral)
    return {"seconds": seconds, "loss": float(loss.detach()), "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=TASKS, action="append", help="default: all three")
    parser.add_argument("--server", help="host:port of a neural-attn server (default: embedded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=HERE, help="where the .npz go")
    parser.add_argument("--steps", type=int, help="Adam steps (default: per task, STEPS)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the budget is 2 cores for everything
    total = time.perf_counter()
    with AttentionClient(args.server or embedded_target(), timeout=300) as client:
        for task in args.task or TASKS:
            r = train(
                client,
                task,
                seed=args.seed,
                steps=args.steps or STEPS[task],
                output_dir=args.output_dir,
            )
            print(
                f"{task:<18} {r['seconds']:5.1f} s  loss {r['loss']:.4f}  "
                f"accuracy {r['accuracy']:.3f}  -> {args.output_dir / task}.npz"
            )
    print(f"total {time.perf_counter() - total:.1f} s (server start and export included)")


if __name__ == "__main__":
    main()
