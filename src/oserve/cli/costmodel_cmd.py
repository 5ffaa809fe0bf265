"""``oserve costmodel validate|fit|formats``: check the cost model against measured profiles, refit it, or
show what it assumes about each number format."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import yaml

from oserve.common.errors import ConfigError
from oserve.costmodel.calibration import (
    STEP_KINDS,
    fit_calibration,
    fit_step_model,
    load_calibration,
    predict_row_ms,
    predict_step_ms,
    profile_gpu,
    read_profile,
)
from oserve.costmodel.catalog import load_gpus, load_models


def register(sub) -> None:
    p = sub.add_parser("costmodel", help="validate or fit the cost model on measured profiles")
    cm = p.add_subparsers(dest="costmodel_command", required=True, metavar="ACTION")
    v = cm.add_parser("validate", help="compare predictions with every row of a profile CSV")
    v.add_argument("--profile", action="append", required=True, metavar="FILE",
                   help="profile CSV (columns gpu,kind,model,tp,a,b,ms); repeatable")
    v.add_argument("--calibration", default=None, metavar="FILE")
    v.add_argument("--gpu", default=None, help="catalog GPU every row was measured on (default: each "
                   "row's gpu column, e.g. 'NVIDIA H100 80GB HBM3' -> H100-80GB)")
    v.add_argument("--models", action="append", default=[], metavar="FILE")
    v.add_argument("--gpus", action="append", default=[], metavar="FILE", help="extra GPU catalog YAML")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_validate)
    f = cm.add_parser("fit", help="fit the calibration on some models' rows and write it as YAML (a "
                      "profile of whole engine steps, step_* rows, gives a GPU catalog file instead: "
                      "the device with its fitted step_model, for --gpus)")
    f.add_argument("--profile", action="append", required=True, metavar="FILE")
    f.add_argument("--train-models", default="llama-2-7b,llama-2-70b",
                   help="comma-separated models whose rows the fit may use")
    f.add_argument("--gpu", default=None, help="catalog GPU of the rows (default: their gpu column, "
                   "which must name one GPU)")
    f.add_argument("--out", required=True, metavar="FILE")
    f.set_defaults(func=run_fit)
    fm = cm.add_parser("formats", help="the factors behind each weight format and KV dtype, and which "
                                       "are measured or uncalibrated")
    fm.add_argument("--model", default="llama-2-70b", help="catalog model (for KV scale overheads)")
    fm.add_argument("--gpu", default="H100-80GB")
    fm.add_argument("--calibration", default=None, metavar="FILE")
    fm.add_argument("--json", action="store_true")
    fm.set_defaults(func=run_formats)


def run_formats(args) -> int:
    """Every weight format x KV dtype on one TP1 replica: its factors and their sources."""
    from oserve.costmodel.cost_model import CostModel
    from oserve.costmodel.precision import KV_FORMATS, WEIGHT_FORMATS
    from oserve.costmodel.replica_config import ReplicaConfig

    gpu = load_gpus().get(args.gpu)
    cost = CostModel(load_models().get(args.model), calibration=load_calibration(args.calibration))
    out = {}
    for w in WEIGHT_FORMATS:
        for kv in KV_FORMATS:
            cfg = ReplicaConfig(gpu.name, 1, 1, weight_format=w, kv_cache_dtype=kv)
            out[f"W:{w} KV:{kv}"] = {k: {"value": f.value, "source": f.source, "note": f.note}
                                     for k, f in cost.precision_factors(cfg).items()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"Number formats on {gpu.name} for {args.model} (sources: exact, datasheet, measured; "
          "'assumed' = uncalibrated until a profile measures it)")
    for name, factors in out.items():
        parts = [f"{k} {f['value']:g} [{f['source']}]" for k, f in factors.items()]
        print(f"  {name:<16} " + "; ".join(parts))
    return 0


def _fit_steps(rows, args) -> int:
    """Whole-step rows (a vLLM-CPU replica): the device's catalog entry with its fitted step model."""
    gpu_of = _row_gpus(rows, load_gpus(), args.gpu)
    devices = {g.name: g for g in gpu_of.values()}
    if len(devices) != 1:
        raise ConfigError(f"--profile step rows are from several devices ({', '.join(sorted(devices))}); "
                          "a step model is fitted for one")
    device = next(iter(devices.values()))
    fitted = fit_step_model(rows)
    errs = [abs(predict_step_ms(r, fitted) / r.ms - 1) for r in rows]
    entry = device.model_copy(update={"step_model": fitted}).model_dump(mode="json")
    with open(args.out, "w") as fh:
        fh.write(f"# {device.name} with its step model fitted by `oserve costmodel fit` on "
                 f"{', '.join(args.profile)} ({len(rows)} rows, median relative error "
                 f"{float(np.median(errs)):.1%}); use with --gpus.\n")
        yaml.safe_dump({"gpus": [entry]}, fh, sort_keys=False)
    print(f"wrote {args.out}: {device.name} step = {1e3 * fitted.step_overhead_s:.1f} ms + "
          f"{1e3 * fitted.prefill_s_per_token:.2f} ms/prefill token + {1e3 * fitted.decode_s_per_seq:.2f} "
          f"ms/decode sequence + {1e6 * fitted.prefill_attention_s_per_token2:.3f} us x sum c(c+2p) of the "
          f"prefill chunks (median error {float(np.median(errs)):.1%}, max {max(errs):.1%})")
    return 0


def _row_gpus(rows, gpus, override: str | None) -> dict:
    """Profile gpu column -> catalog GPU (every row the ``override`` GPU when one is given)."""
    names = dict.fromkeys(r.gpu for r in rows)
    if override:
        spec = gpus.get(override)
        return {n: spec for n in names}
    return {n: profile_gpu(n, gpus) for n in names}


def _rows(paths):
    rows = []
    for p in paths:
        rows += read_profile(p)
    return rows


def _summary(errors: np.ndarray) -> dict:
    return {"rows": int(len(errors)), "median_rel_err": float(np.median(errors)),
            "p90_rel_err": float(np.percentile(errors, 90)), "max_rel_err": float(errors.max())}


def run_validate(args) -> int:
    cal = load_calibration(args.calibration)
    catalog = load_models(args.models)
    rows = _rows(args.profile)
    if not rows:
        raise ConfigError("profile has no rows to validate")
    gpu_of = _row_gpus(rows, load_gpus(args.gpus), args.gpu)
    errs, kinds, held = [], [], []
    for r in rows:
        if r.kind in STEP_KINDS:  # whole steps are priced by the device's step model
            step_model = gpu_of[r.gpu].step_model
            if step_model is None:
                raise ConfigError(f"profile row {r.line} is a '{r.kind}' row but {gpu_of[r.gpu].name} has "
                                  "no step_model (fit one with `oserve costmodel fit`, pass it with --gpus)")
            pred = predict_step_ms(r, step_model)
        else:
            pred = predict_row_ms(r, catalog.get(r.model), gpu_of[r.gpu], cal)
        errs.append(abs(pred / r.ms - 1))
        kinds.append(r.kind)
        held.append(r.model not in cal.fitted_on)
    errs_a, kinds_a, held_a = np.array(errs), np.array(kinds), np.array(held)
    out = _summary(errs_a)
    out["per_kind"] = {k: _summary(errs_a[kinds_a == k]) for k in dict.fromkeys(kinds)}
    out["fitted_on"] = list(cal.fitted_on)
    out["gpus"] = dict(Counter(gpu_of[r.gpu].name for r in rows))
    if held_a.any():
        out["held_out"] = _summary(errs_a[held_a])
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"Cost model vs {len(rows)} measured rows on {', '.join(out['gpus'])} (calibration fitted on "
          f"{', '.join(cal.fitted_on)})")
    print(f"{'kind':<16}{'rows':>6}{'median':>9}{'p90':>9}{'max':>9}")
    for name, s in [("overall", out)] + list(out["per_kind"].items()) + (
            [("held-out models", out["held_out"])] if "held_out" in out else []):
        print(f"{name:<16}{s['rows']:>6}{s['median_rel_err']:>9.1%}{s['p90_rel_err']:>9.1%}"
              f"{s['max_rel_err']:>9.1%}")
    return 0


def run_fit(args) -> int:
    rows = _rows(args.profile)
    if rows and all(r.kind in STEP_KINDS for r in rows):
        return _fit_steps(rows, args)
    catalog = load_models()
    train = [m.strip() for m in args.train_models.split(",") if m.strip()]
    models = {m: catalog.get(m) for m in {r.model for r in rows}}
    gpu_of = _row_gpus(rows, load_gpus(), args.gpu)
    fitted_gpus = {g.name for g in gpu_of.values()}
    if len(fitted_gpus) != 1:
        raise ConfigError(f"--profile rows are from several GPUs ({', '.join(sorted(fitted_gpus))}): a "
                          "calibration is fitted for one; give one GPU's profiles or --gpu")
    cal = fit_calibration(rows, models, next(iter(gpu_of.values())), train)
    d = cal.to_dict()
    d["source"] = ", ".join(args.profile)
    with open(args.out, "w") as fh:
        fh.write("# Cost-model calibration written by `oserve costmodel fit`.\n")
        yaml.safe_dump(d, fh, sort_keys=False)
    print(f"wrote {args.out} (fitted on {', '.join(train)})")
    return 0
