"""Pipeline bubbles against the measured H100 layer profile: how much the old even-split rule was off.

A PP step's time is ``pp`` stage times of its largest micro-batch (``costmodel.pipeline``); the old rule
priced ``pp`` stage times of an even ``1/pp`` share of the step. No profile in ``../shared`` measures a
whole pipeline, but both rules are built from stage times, i.e. ``layers / pp`` whole-layer times, and
those are measured (``h100_layer_profile.csv``: one decoder layer on one TP shard). For step shapes whose
micro-batches the profile covers, this prints both rules evaluated on the *measured* layer times (the
size of the correction, no model involved) and the calibrated cost model's layer time at the new rule's
micro-batch (the error of the term the new rule relies on). Writes bench/results/pp_bubbles.{json,md}.

    python bench/pp_bubbles.py [--profile ../shared/data/profiles/h100_layer_profile.csv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oserve.costmodel.calibration import ProfileRow, load_calibration, predict_row_ms, read_profile
from oserve.costmodel.catalog import load_gpus, load_models

CASES = [("llama-2-70b", 4, 2), ("llama-2-13b", 2, 4), ("llama-2-7b", 1, 4), ("llama-2-13b", 1, 8)]
DECODE_PER_MICRO = (1, 8, 32, 64)
DECODE_CTX = "1024"
CHUNKS = (2048, 4096, 8192)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="../shared/data/profiles/h100_layer_profile.csv")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    rows = read_profile(args.profile)
    models, gpu, cal = load_models(), load_gpus().get("H100-80GB"), load_calibration()
    index = {(r.kind, r.model, r.tp, int(r.a), r.b): r for r in rows}
    out = []
    for name, tp, pp in CASES:
        model = models.get(name)

        def layer(kind: str, a: int, b: str, name=name, tp=tp, model=model) -> tuple[float, float] | None:
            """(measured, cost-model) ms of one layer, None where the profile has no such row."""
            r = index.get((kind, name, tp, a, b))
            if r is None:
                return None
            probe = ProfileRow(0, r.gpu, kind, name, tp, float(a), b, r.ms)
            return r.ms, predict_row_ms(probe, model, gpu, cal)

        stage_layers = model.num_layers / pp
        shapes = [(f"decode {pp * k} seqs", "layer_decode", pp * k, k, pp * k / pp, DECODE_CTX)
                  for k in DECODE_PER_MICRO]
        # fewer sequences than stages: one per micro-batch, the even rule's 1/pp of a sequence is 1 too
        shapes.append((f"decode {max(1, pp // 2)} seqs", "layer_decode", max(1, pp // 2), 1, 1, DECODE_CTX))
        shapes += [(f"one {c}-token chunk", "layer_prefill", c, c, c // pp, "1") for c in CHUNKS]
        for label, kind, _total, largest, even, b in shapes:
            new, old = layer(kind, int(largest), b), layer(kind, int(even), b)
            if new is None or old is None:
                continue
            new_ms, old_ms = pp * stage_layers * new[0], pp * stage_layers * old[0]
            model_ms = pp * stage_layers * new[1]
            out.append({"model": name, "tp": tp, "pp": pp, "step": label,
                        "measured_largest_micro_batch_ms": new_ms, "measured_even_split_ms": old_ms,
                        "even_split_underestimate": new_ms / old_ms,
                        "cost_model_largest_micro_batch_ms": model_ms,
                        "cost_model_error": model_ms / new_ms - 1})
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pp_bubbles.json").write_text(json.dumps(out, indent=1))
    lines = ["# PP step time on measured H100 layer times: largest micro-batch vs even split", "",
             "Layers only (TP all-reduces, stage sends, LM head and the engine's step overhead are left "
             "out: the same in both rules).", "",
             "| model | TP | PP | step | measured, largest micro-batch (ms) | measured, even split (ms) | "
             "even split too low by | cost model, largest (ms) | cost model error |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in out:
        lines.append(f"| {r['model']} | {r['tp']} | {r['pp']} | {r['step']} | "
                     f"{r['measured_largest_micro_batch_ms']:.1f} | {r['measured_even_split_ms']:.1f} | "
                     f"{r['even_split_underestimate']:.2f}x | {r['cost_model_largest_micro_batch_ms']:.1f} | "
                     f"{100 * r['cost_model_error']:+.1f}% |")
    (dest / "pp_bubbles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
