"""Rewrite tests/dsl/golden/*.json from the .neural files beside them.

Run ``python -m tests.dsl.regen_golden`` from the repository root after an intended change,
then read the diff: the golden test itself never rewrites anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from neural_attn.dsl import compile_file, network_to_dict

GOLDEN = Path(__file__).parent / "golden"


def main() -> None:
    for source in sorted(GOLDEN.glob("*.neural")):
        data = network_to_dict(compile_file(source))
        source.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {source.with_suffix('.json')}")


if __name__ == "__main__":
    main()
