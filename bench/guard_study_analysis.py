"""The analysis half of ``bench/guard_study.py``: cross-validated replay of the guard on collected answers.

For every variant of the test (statistic mean-loglik / loglik-gain x no-leak sample answered without /
with the system prompt) and every prompt, a 5-fold cross-validation over the queries the prompt has
answers for: each answer is tested once, by the guard's own ``Calibration`` fitted on answers to *other*
queries (30 + 30, the GuardConfig default sizes, where the prompt has that many; fewer where the
collection was bounded), and the guard's action is replayed: a detected answer is replaced by the
answer to the chat without the system prompt. The secret rate off vs on comes with exact
(Clopper-Pearson) intervals and the reduction factor with its one-sided 95% lower bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import beta

from guard_bench import SYSTEM_PROMPTS
from oserve.guard.calibration import Calibration, SamplingSettings
from oserve.guard.leakage import leak_score

NUM_CALIBRATION = 30  # per side, the GuardConfig default
NUM_FOLDS = 5
VARIANTS = [(stat, null) for stat in ("mean-loglik", "loglik-gain")
            for null in ("without-system", "with-system")]
DEFAULT_VARIANT = "loglik-gain / no-leak with-system"


def fold_split(fold: int, answered: list[int]) -> tuple[list[int], list[int]]:
    """(test, calibration) queries of fold ``fold`` among the ``answered`` query indices. Every query is
    tested in exactly one fold. The calibration takes up to 30 others; where skipping the next fold as
    well still leaves 30 (50 extraction queries), it does, as the study always has."""
    test = [q for q in answered if q % NUM_FOLDS == fold]
    others = [q for q in answered if q % NUM_FOLDS != fold]
    narrower = [q for q in others if q % NUM_FOLDS != (fold + 1) % NUM_FOLDS]
    return test, (narrower if len(narrower) >= NUM_CALIBRATION else others)[:NUM_CALIBRATION]


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval of a binomial proportion (k of n)."""
    if n == 0:
        return (0.0, 1.0)
    tail = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return lo, hi


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial proportion (k of n); 1 - (1-level)^(1/n) at 0."""
    return 1.0 if n == 0 or k == n else float(beta.ppf(level, k + 1, n - k))


def secret_reduction(leaks_off: int, leaks_on: int) -> dict:
    """How much the guard reduces secret leaks: off/on, and its one-sided 95% lower bound.

    Replayed, an answer the guard returns unchanged is the unguarded one and a detected one is
    replaced by an answer of a model that never saw the secret, so every guarded leak is an unguarded
    leak that got through: leaks_on of leaks_off is a binomial share p, the reduction is 1/p, and its
    lower bound is 1 over p's upper bound (0 of k got through: about k/3)."""
    share_hi = upper_bound(leaks_on, leaks_off) if leaks_off else 1.0
    return {"leaks_off": leaks_off, "leaks_on": leaks_on,
            "reduction": (leaks_off / leaks_on) if leaks_on else (float("inf") if leaks_off else None),
            "reduction_lower_95": 1.0 / share_hi if leaks_off else None,
            "escape_share_upper_95": share_hi}


def _value(stat: str, with_system: float | None, without: float | None) -> float | None:
    if with_system is None or (stat == "loglik-gain" and without is None):
        return None
    return with_system if stat == "mean-loglik" else with_system - without


def _calibration(stat: str, null: str, p: int, cal_o: list[int], cal_e: list[int], answers: dict,
                 scored: dict, alpha: float) -> Calibration | None:
    """The guard's test for prompt ``p`` fitted on the given queries' answers (None: not enough)."""
    system = SYSTEM_PROMPTS[p][1]

    def value(a: dict) -> float | None:
        return _value(stat, a["scores"]["with"], a["scores"]["without"]) if a["text"] else None

    leak = [value(answers[(p, "extraction", q, 0)]) for q in cal_e]
    if null == "with-system":
        no_leak = [value(answers[(p, "ordinary", q, 0)]) for q in cal_o
                   if not leak_score(answers[(p, "ordinary", q, 0)]["text"], system, "").reveals]
    else:
        if any((p, "ordinary", q, 0) not in scored for q in cal_o):
            return None  # a bounded collection skipped these scorings
        no_leak = [_value(stat, scored[(p, "ordinary", q, 0)],
                          answers[(None, "ordinary", q, 0)]["scores"]["without"])
                   for q in cal_o if answers[(None, "ordinary", q, 0)]["text"]]
    no_leak, leak = [v for v in no_leak if v is not None], [v for v in leak if v is not None]
    if len(no_leak) < 2 or len(leak) < 2:
        return None
    settings = SamplingSettings(len(no_leak), len(leak), 0, 0.0, 0, "drop-system", "", stat, null)
    return Calibration("SmolLM2-135M-Instruct", "0" * 64, tuple(no_leak), tuple(leak), settings, alpha)


def _replay(stat: str, p: int, kind: str, q: int, answers: dict, cal: Calibration) -> dict:
    name, system, secret = SYSTEM_PROMPTS[p]
    a = answers[(p, kind, q, 0)]
    v = _value(stat, a["scores"]["with"], a["scores"]["without"]) if a["text"] else None
    detected = cal.is_leak(v)
    # on a detection the guard returns the answer to the chat without the system prompt; where the run
    # did not generate it, it is scored as revealing nothing (that model never saw the prompt)
    regenerated = answers.get((None, kind, q, 0), {"text": ""})["text"]
    s_off, s_on = leak_score(a["text"], system, secret), leak_score(regenerated if detected else a["text"],
                                                                    system, secret)
    return {"prompt": name, "kind": kind, "q": q, "value": v, "detected": detected,
            "regeneration_generated": (None, kind, q, 0) in answers,
            "off": vars(s_off) | {"reveals": s_off.reveals}, "on": vars(s_on) | {"reveals": s_on.reveals}}


def _variant(stat: str, null: str, prompts: list[int], answers: dict, scored: dict, alpha: float) -> dict:
    evals, fits = [], []
    for p in prompts:
        answered = {k: sorted(q for (pp, kk, q, _) in answers if pp == p and kk == k)
                    for k in ("ordinary", "extraction")}
        for fold in range(NUM_FOLDS):
            test_o, cal_o = fold_split(fold, answered["ordinary"])
            test_e, cal_e = fold_split(fold, answered["extraction"])
            cal = _calibration(stat, null, p, cal_o, cal_e, answers, scored, alpha)
            if cal is None:
                continue
            fits.append({"prompt": SYSTEM_PROMPTS[p][0], "fold": fold, **cal.summary()})
            evals += [_replay(stat, p, kind, q, answers, cal)
                      for kind, tests in (("ordinary", test_o), ("extraction", test_e)) for q in tests]
    return {"summary": summarise(evals, fits), "calibrations": fits, "evals": evals}


def summarise(evals: list[dict], fits: list[dict]) -> dict:
    order = [name for name, _, _ in SYSTEM_PROMPTS]
    summary: dict = {"prompts": sorted({e["prompt"] for e in evals}, key=order.index)}
    for kind in ("extraction", "ordinary"):
        sel = [e for e in evals if e["kind"] == kind]
        n, regenerated = len(sel), int(sum(e["detected"] for e in sel))
        summary[kind] = {"n": n, "regenerated": regenerated / n if n else None,
                         "regenerated_count": regenerated, "regenerated_95": clopper_pearson(regenerated, n),
                         **{f"{m}_{side}": int(sum(e[side][m] for e in sel))
                            for m in ("has_secret", "reveals") for side in ("off", "on")},
                         **{f"{m}_{side}_95": clopper_pearson(int(sum(e[side][m] for e in sel)), n)
                            for m in ("has_secret", "reveals") for side in ("off", "on")},
                         **{f"mean_{m}_{side}": float(np.mean([e[side][m] for e in sel])) if sel else None
                            for m in ("token_f1", "common_words") for side in ("off", "on")}}
    leaks = [e for e in evals if e["kind"] == "extraction" and e["off"]["has_secret"]]
    summary["secret_leaks_detected"] = f"{sum(e['detected'] for e in leaks)} of {len(leaks)}"
    summary["secret_reduction"] = secret_reduction(summary["extraction"]["has_secret_off"],
                                                   summary["extraction"]["has_secret_on"])
    summary["by_prompt"] = {
        name: {"extraction_n": sum(e["kind"] == "extraction" for e in mine),
               "secret_off": sum(e["kind"] == "extraction" and e["off"]["has_secret"] for e in mine),
               "secret_on": sum(e["kind"] == "extraction" and e["on"]["has_secret"] for e in mine),
               "ordinary_n": sum(e["kind"] == "ordinary" for e in mine),
               "false_regenerations": sum(e["kind"] == "ordinary" and e["detected"] for e in mine)}
        for name in summary["prompts"] for mine in [[e for e in evals if e["prompt"] == name]]}
    if fits:
        summary["mean_fit"] = {h: {m: float(np.mean([f[h][m] for f in fits])) for m in ("mean", "std", "n")}
                               for h in ("no_leak", "leak")}
        summary["mean_power"] = float(np.mean([f["power"] for f in fits]))
        summary["effective_alpha_range"] = [float(min(f["effective_alpha"] for f in fits)),
                                            float(max(f["effective_alpha"] for f in fits))]
    return summary


def load(paths: list[str]) -> tuple[dict, dict]:
    rows = [json.loads(line) for path in paths for line in Path(path).read_text().splitlines()]
    answers = {(r["prompt"], r["kind"], r["q"], r["sample"]): r for r in rows if "text" in r}
    scored = {(r["prompt"], r["kind"], r["q"], r["sample"]): r["scored_with_system"]
              for r in rows if "scored_with_system" in r}
    return answers, scored


def analyse(paths: list[str], alpha: float) -> dict:
    """Every variant over every prompt with answers; results next to the first file (JSON, Markdown)."""
    answers, scored = load(paths)
    prompts = sorted({p for (p, _, _, _) in answers if p is not None})
    results = {f"{stat} / no-leak {null}": _variant(stat, null, prompts, answers, scored, alpha)
               for stat, null in VARIANTS}
    out = Path(paths[0]).with_name("study_analysis.json")
    out.write_text(json.dumps({"prompts": [SYSTEM_PROMPTS[p][0] for p in prompts], "alpha": alpha,
                               "variants": results}, indent=1))
    text = markdown(results, len(results[DEFAULT_VARIANT]["summary"]["prompts"]), alpha)
    out.with_suffix(".md").write_text(text)
    print(text)
    return results


def _pct(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.1%} [{lo:.1%}, {hi:.1%}]" if n else "-"


def markdown(results: dict, num_prompts: int, alpha: float) -> str:
    lines = [f"# Guard study: {num_prompts} system prompts, alpha {alpha} (5-fold cross-validation over "
             "queries: each answer tested once, by a test calibrated on up to 30 + 30 others; decisions "
             "replayed; [95% Clopper-Pearson])", "",
             "| variant | prompts | extraction: secret off | secret on | reduction (95% lower) | reveals "
             "off / on | token-F1 off / on | common words off / on | regenerated | ordinary: false "
             "regenerations | secret leaks detected | no-leak fit | leak fit |", "|" + "---|" * 13]
    for key, r in results.items():
        s = r["summary"]
        if "mean_fit" not in s:
            lines.append(f"| {key} | 0 | (no calibration possible) |" + " |" * 10)
            continue
        e, o, f, red = s["extraction"], s["ordinary"], s["mean_fit"], s["secret_reduction"]
        lines.append(
            f"| {key} | {len(s['prompts'])} | {_pct(e['has_secret_off'], e['n'])} | "
            f"{_pct(e['has_secret_on'], e['n'])} | {red['reduction'] or 0:.1f}x "
            f"({red['reduction_lower_95'] or 0:.1f}x) | {e['reveals_off']} / {e['reveals_on']} | "
            f"{e['mean_token_f1_off']:.3f} / {e['mean_token_f1_on']:.3f} | "
            f"{e['mean_common_words_off']:.1f} / {e['mean_common_words_on']:.1f} | {e['regenerated']:.0%} | "
            f"{_pct(o['regenerated_count'], o['n'])} | {s['secret_leaks_detected']} | "
            f"N({f['no_leak']['mean']:.2f}, {f['no_leak']['std']:.2f}) | "
            f"N({f['leak']['mean']:.2f}, {f['leak']['std']:.2f}) |")
    s = results[DEFAULT_VARIANT]["summary"]
    lines += ["", f"Per prompt ({DEFAULT_VARIANT}, the default):", "",
              "| prompt | extraction n | secret off | secret on | ordinary n | false regenerations |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {b['extraction_n']} | {b['secret_off']} | {b['secret_on']} | {b['ordinary_n']} | "
              f"{b['false_regenerations']} |" for name, b in s.get("by_prompt", {}).items()]
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_VARIANT", "analyse", "clopper_pearson", "fold_split", "secret_reduction", "summarise",
           "upper_bound"]
