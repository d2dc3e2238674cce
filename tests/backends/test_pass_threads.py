"""Model work runs on the pass threads (backends/streaming.py `_Threads`): whatever thread asks,
a sequence of builds and passes runs on one kept thread, so PyTorch keeps a single OpenMP team;
a job that finds that thread busy gets a thread of its own that ends with it."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from neural_attn.backends.base import get_backend
from neural_attn.backends.streaming import on_pass_thread
from neural_attn.dsl import compile_source

SOURCE = """
network Threads {
  input: (64, 32)
  layers:
    TransformerEncoder(num_heads=4, ff_dim=64) * 2
    GlobalAveragePooling1D()
    Output(units=2)
}
"""
DATA = np.random.default_rng(3).standard_normal((1, 64, 32)).astype(np.float32)


def _names(model) -> list[str]:
    return [layer.name for _, layer in model.network.attention_sites]


def test_on_pass_thread_returns_raises_and_nests() -> None:
    caller = threading.get_ident()
    inner: list[int] = []

    def job() -> int:
        inner.append(threading.get_ident())
        # Nested: runs inline on the same pass thread (no second thread, no deadlock).
        return on_pass_thread(lambda: threading.get_ident())

    assert on_pass_thread(job) == inner[0] != caller

    with pytest.raises(ZeroDivisionError):
        on_pass_thread(lambda: 1 / 0)


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_builds_and_passes_from_any_caller_run_on_one_thread(backend: str, monkeypatch) -> None:
    """Callers on different threads (gRPC workers, a notebook's main thread) all land on the one
    kept pass thread when they come one after another."""
    network = compile_source(SOURCE, filename="threads.neural")
    seen: dict[str, set[int]] = {}

    def spy(module, name: str, label: str) -> None:
        inner = getattr(module, name)

        def recorded(*args, **kwargs):
            seen.setdefault(label, set()).add(threading.get_ident())
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)

    if backend == "pytorch":  # what runs inside build, set_weights, get_weights and each pass
        from neural_attn.backends.pytorch import blocks
        from neural_attn.backends.pytorch import build as pytorch_build

        spy(pytorch_build, "padding_masked_layers", "build")
        spy(pytorch_build, "check_neutral", "set_weights")
        spy(pytorch_build, "weight_shapes", "get_weights")
        spy(blocks.SelfAttention, "forward", "pass")
    results: dict[str, object] = {}

    def from_caller(label: str, fn) -> None:
        t = threading.Thread(target=lambda: results.__setitem__(label, fn()))
        t.start()
        t.join(60)

    from_caller("model", lambda: get_backend(backend).build(network, seed=0))
    model = results["model"]
    names = _names(model)
    from_caller("forward", lambda: model.forward(DATA, capture=names))
    from_caller("stream", lambda: {n: t.values for n, t in model.stream(DATA, capture=names)})
    from_caller("weights", lambda: model.set_weights(model.get_weights()))
    _, kept = model.forward(DATA, capture=names)
    if backend == "pytorch":
        assert set(seen) == {"build", "set_weights", "get_weights", "pass"}
        threads = set().union(*seen.values())
        assert len(threads) == 1 and threading.get_ident() not in threads, seen
    for name in names:  # the same numbers whichever path and thread produced them
        np.testing.assert_allclose(results["stream"][name], kept[name], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(results["forward"][1][name], kept[name], rtol=1e-6, atol=1e-7)


def test_a_job_that_finds_the_pass_thread_busy_runs_on_a_thread_that_ends_with_it() -> None:
    busy, release = threading.Event(), threading.Event()
    primary = threading.Thread(target=lambda: on_pass_thread(lambda: (busy.set(), release.wait())))
    primary.start()
    assert busy.wait(10)
    try:
        extra = on_pass_thread(threading.current_thread)
        assert extra.name == "attention-pass-extra"
        extra.join(10)  # it ends once its job is done, taking its OpenMP team with it
        assert not extra.is_alive()
    finally:
        release.set()
        primary.join(10)


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_pytorch_passes_from_many_callers_add_no_openmp_threads() -> None:
    """Each thread that runs a parallel torch op gets an OpenMP team of its own (and a process
    with more such threads than cores runs every op slower). Passes asked for from three long-
    lived caller threads must not add threads to the process once the first pass has run."""
    torch = pytest.importorskip("torch")
    if torch.get_num_threads() < 2:
        pytest.skip("torch runs single-threaded here: no OpenMP teams to count")
    network = compile_source(SOURCE, filename="threads.neural")
    model = get_backend("pytorch").build(network, seed=0)
    names = _names(model)
    model.forward(DATA, capture=names)  # the pass thread and its team exist from here on
    before = _os_threads()
    go, done = threading.Event(), threading.Barrier(4)

    def caller() -> None:
        for _ in range(3):
            model.forward(DATA, capture=names)
            {n: t.values for n, t in model.stream(DATA, capture=names)}
        done.wait()  # stay alive while the threads are counted
        go.wait()

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for t in callers:
        t.start()
    done.wait(60)
    try:
        # A thread made for a concurrent pass ends just after it; give it a moment to go.
        deadline = time.monotonic() + 10
        while _os_threads() > before + len(callers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _os_threads() <= before + len(callers)
    finally:
        go.set()
        for t in callers:
            t.join(10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_model_work_on_a_primary_of_its_own() -> None:
    """The parent's pass thread does not exist in a forked child: work there must not wait."""
    on_pass_thread(lambda: None)  # the parent's primary exists (and is idle) from here on
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the job ran
        done = threading.Event()
        threading.Thread(target=lambda: (on_pass_thread(lambda: None), done.set())).start()
        os._exit(0 if done.wait(10) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
def test_a_caller_interrupted_while_waiting_stops_the_pass_between_layers() -> None:
    """Ctrl-C reaches the caller's wait, not the pass thread: the pass must still stop at the next
    layer, not run on in the background holding the model."""
    source = SOURCE.replace("* 2", "* 8")
    model = get_backend("pytorch").build(compile_source(source, filename="t.neural"), seed=0)
    started: list[int] = []

    def slow_layer(*_) -> None:  # a pre-hook returning a value would replace the input
        started.append(1)
        time.sleep(0.5)  # 4 s for the 8 layers: the signal lands inside the pass on a busy CI too

    hooks = [
        module.register_forward_pre_hook(slow_layer)
        for module in model.model.modules()
        if type(module).__name__ == "SelfAttention"
    ]
    main = threading.get_ident()  # a real SIGINT to this thread, as Ctrl-C sends
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        model.forward(DATA, capture=_names(model))
    time.sleep(1.5)  # the pass, had it run on, would be well into its 8 layers by now
    assert 1 <= len(started) <= 3, started
    for hook in hooks:
        hook.remove()
    model.forward(DATA)  # the model is free again
