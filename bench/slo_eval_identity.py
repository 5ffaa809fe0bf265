"""Do two runs of ``bench/slo_goodput_eval.py`` (e.g. on two source trees) give the same results?

Compares the scenario JSONs of two output folders: every field but the timings (``seconds``,
``planner_seconds``) and ``git_revision`` must be equal (each planner's deployment, goodput scale,
attainment probes, per-type attainment and P99s, the verification's shortlist and confirmation). With
``--committed DIR`` each scenario's deployments and goodput scales are also checked against a committed
run. Writes ``--out`` (markdown) and exits 1 when any scenario differs.

    PYTHONPATH=/tmp/base/src python bench/slo_goodput_eval.py ... --out /tmp/eval_base
    PYTHONPATH=src python bench/slo_goodput_eval.py ... --out /tmp/eval_new
    python bench/slo_eval_identity.py /tmp/eval_base /tmp/eval_new \
        --committed bench/results/slo_goodput_confirm --out bench/results/slo_eval_identity.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMINGS = {"seconds", "planner_seconds", "git_revision"}


def without_timings(x):
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if k not in TIMINGS}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--committed", help="a committed run's folder: deployments and goodput scales too")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    lines = [f"Scenario results of `{args.after}` against `{args.before}` (every field but timings)"
             + (f"; deployments and goodput scales against `{args.committed}`" if args.committed else ""),
             "", "| scenario | identical | as committed | oserve deployment | oserve goodput |",
             "| --- | --- | --- | --- | --- |"]
    same = total = 0
    for path in sorted(Path(args.before).glob("*.json")):
        other = Path(args.after) / path.name
        if not other.exists():
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        ok = without_timings(a) == without_timings(b)
        committed = "-"
        if args.committed and (Path(args.committed) / path.name).exists():
            c = json.loads((Path(args.committed) / path.name).read_text())["planners"]
            committed = "yes" if all(c[p]["deployment"] == q["deployment"]
                                     and c[p]["goodput_scale"] == q["goodput_scale"]
                                     for p, q in b["planners"].items()) else "NO"
        total += 1
        same += ok
        o = b["planners"]["oserve"]
        lines.append(f"| {path.stem} | {'yes' if ok else 'NO'} | {committed} | {o['deployment']} | "
                     f"{o['goodput_scale']:.3f} |")
    lines += ["", f"{same} of {total} scenarios identical."]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if same == total else 1


if __name__ == "__main__":
    sys.exit(main())
