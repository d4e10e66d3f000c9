"""One table of runs from several `benchmark_methods.py` reports, per seed and pooled over seeds.

    python examples/results_table.py \\
        "vdl, text-bank=examples/results/text_bank/seed0/results.json:vdl" \\
        "vdl, text-bank=examples/results/text_bank/seed1/results.json:vdl" \\
        "supervised=examples/results/lr4e-3/toy_benchmark.json:supervised" --output table.md

Each argument is ``LABEL=REPORT:RUN``: the run ``RUN`` of the report ``REPORT`` (a ``results.json``),
shown as ``LABEL``. The seed of each row is the report's training seed. A label given for several
seeds also gets a pooled row: the mean over its seeds, ± the standard error of that mean
(``sqrt(Σ se²) / k``, the seeds being independent worlds and trainings).
"""

import argparse
import json
import math
from pathlib import Path

# (heading, where the figure is in a run's report)
COLUMNS = [
    ("captions: all mentioned right", ("metrics", "all_mentioned_accuracy")),
    ("position", ("metrics", "position_accuracy")),
    ("background", ("metrics", "background_accuracy")),
    ("40 pairs", ("pairs", "pairs_accuracy")),
    ("held-out pairs", ("pairs", "heldout_pairs_accuracy")),
    ("oracle FD ↓", ("metrics", "oracle_fd")),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="LABEL=REPORT:RUN, in table order")
    parser.add_argument("--output", type=Path, help="also write the table here (Markdown) and its figures beside it (.json)")
    return parser.parse_args()


def read_row(spec: str) -> tuple[str, int, dict]:
    """The label, training seed and figures of one ``LABEL=REPORT:RUN``."""
    label, _, source = spec.rpartition("=")  # a label may hold "=" ("β = 1"), a report's path does not
    report, _, run = source.rpartition(":")
    if not (label and report and run):
        raise SystemExit(f"{spec!r}: expected LABEL=REPORT:RUN, e.g. 'vdl=results/seed0/results.json:vdl'.")
    if not Path(report).is_file():
        raise SystemExit(f"{spec!r}: no report {report}.")
    data = json.loads(Path(report).read_text())
    if run not in data["runs"]:
        raise SystemExit(f"{report} has no run {run!r}; it has {', '.join(data['runs'])}.")
    figures = {}
    for heading, (part, key) in COLUMNS:
        figures[heading] = data["runs"][run].get(part, {}).get(key)
    return label, data["settings"]["seed"], figures


def pooled(rows: list[dict]) -> dict:
    """The mean over seeds of each figure, ± the standard error of that mean."""
    figures = {}
    for heading, _ in COLUMNS:
        values = [row[heading] for row in rows]
        if any(value is None for value in values):
            figures[heading] = None
            continue
        figures[heading] = {
            "value": sum(v["value"] for v in values) / len(values),
            "se": math.sqrt(sum(v["se"] ** 2 for v in values)) / len(values),
            "n": sum(v["n"] for v in values),
        }
    return figures


def cell(figure: dict | None, heading: str) -> str:
    if figure is None:
        return ""
    digits = 0 if heading.startswith("oracle FD") else 3
    return f"{figure['value']:.{digits}f} ± {figure['se']:.{digits}f}"


def main():
    args = parse_args()
    rows = [read_row(spec) for spec in args.rows]
    by_label: dict[str, list] = {}
    for label, seed, figures in rows:
        by_label.setdefault(label, []).append((seed, figures))
    ns = {heading: sorted({row[heading]["n"] for _, _, row in rows if row[heading]}) for heading, _ in COLUMNS}
    header = ["run", "seed"] + [f"{heading} (n = {'/'.join(map(str, ns[heading]))})" for heading, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for label, seeded in by_label.items():
        for seed, figures in sorted(seeded, key=lambda item: item[0]):
            lines.append("| " + " | ".join([label, str(seed)] + [cell(figures[h], h) for h, _ in COLUMNS]) + " |")
            table.append({"run": label, "seed": seed, **figures})
        if len(seeded) > 1:
            figures = pooled([figures for _, figures in seeded])
            seeds = "+".join(str(seed) for seed, _ in sorted(seeded, key=lambda item: item[0]))
            lines.append("| " + " | ".join([f"**{label}**", f"**mean {seeds}**"] + [f"**{cell(figures[h], h)}**" if figures[h] else "" for h, _ in COLUMNS]) + " |")
            table.append({"run": label, "seed": f"mean {seeds}", **figures})
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
        args.output.with_suffix(".json").write_text(json.dumps({"rows": args.rows, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
