"""Print bench/results.json (or another run's) as Markdown tables, CPU and GPU rows apart, for
bench/RESULTS.md. The prose around them is written by hand.

    python bench/to_markdown.py [bench/results.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import BENCH, Row, fmt_value, status


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else BENCH / "results.json"
    run = json.loads(path.read_text())
    rows = [Row(**r) for r in run["rows"]]
    for title, group in (
        ("CPU", [r for r in rows if r.device == "cpu"]),
        ("GPU", [r for r in rows if r.device != "cpu"]),
    ):
        print(f"\n### {title} rows\n")
        if not group:
            print(run.get("gpu", "no GPU here") if title == "GPU" else "none")
            continue
        print("| § | row | value | target | | note |")
        print("| --- | --- | ---: | --- | --- | --- |")
        for r in group:
            label = r.label.strip().replace("|", "\\|")
            note = r.note.replace("|", "\\|")
            target = r.target.replace("<=", "≤").replace(">=", "≥")
            print(f"| {r.section} | {label} | {fmt_value(r)} | {target} | {status(r)} | {note} |")


if __name__ == "__main__":
    main()
