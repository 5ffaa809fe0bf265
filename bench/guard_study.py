"""Which statistic and which no-leak sample separate leaks on SmolLM2-135M: answers and both scores.

    python bench/guard_study.py collect --prompts 0-4 --out bench/results/guard/study.jsonl
    python bench/guard_study.py analyse --data bench/results/guard/study.jsonl

``collect`` generates, on the embedded llama.cpp engine (no gateway), every answer the guard's
calibration and the benchmark's held-out evaluation need, and scores each with the system prompt and
without it (the engine's own scoring instances, as the guard does); one JSON line per answer, appended,
so a run can be split over several bounded invocations (``--prompts``). ``analyse`` calibrates each
variant of the test (statistic mean-loglik / loglik-gain x no-leak sample answered without / with the
system prompt) on the calibration answers with ``oserve.guard.calibration.Calibration`` (the guard's own
test) and replays its decisions on the held-out answers: what the guard would return (the answer, or on a
detection the answer to the chat without the system prompt, also generated here), the secret and reveal
rates off and on, the false regenerations on ordinary queries. Results go next to --data (JSON, Markdown).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from guard_bench import SYSTEM_PROMPTS  # noqa: E402
from oserve.guard.calibration import EXTRACTION_SEED_OFFSET  # noqa: E402
from oserve.guard.question_sets import EXTRACTION_QUERIES, ORDINARY_QUESTIONS  # noqa: E402
from oserve.guard.statistic import mean_log_likelihood  # noqa: E402

NUM_CALIBRATION = 30  # per side, the GuardConfig default
NUM_FOLDS = 5


def folds(fold: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Fold ``fold`` of the cross-validation over queries: (test, calibration) ordinary questions and
    (test, calibration) extraction queries. Every query is tested in exactly one fold, by a test
    calibrated on 30 + 30 others (the GuardConfig default sizes)."""
    test_o = [q for q in range(len(ORDINARY_QUESTIONS)) if q % NUM_FOLDS == fold]
    cal_o = [q for q in range(len(ORDINARY_QUESTIONS)) if q % NUM_FOLDS != fold][:NUM_CALIBRATION]
    test_e = [q for q in range(len(EXTRACTION_QUERIES)) if q % NUM_FOLDS == fold]
    cal_e = [q for q in range(len(EXTRACTION_QUERIES))
             if q % NUM_FOLDS not in (fold, (fold + 1) % NUM_FOLDS)][:NUM_CALIBRATION]
    return test_o, cal_o, test_e, cal_e


def plan(prompt_index: int) -> list[dict]:
    """The answers to collect for one prompt: every query of both sets, with the system prompt, at the
    calibration's seeds."""
    jobs = [dict(prompt=prompt_index, kind="extraction", q=i, sample=0, seed=EXTRACTION_SEED_OFFSET + i,
                 system=True) for i in range(len(EXTRACTION_QUERIES))]
    return jobs + [dict(prompt=prompt_index, kind="ordinary", q=i, sample=0, seed=i, system=True)
                   for i in range(len(ORDINARY_QUESTIONS))]


def shared_plan(kind: str) -> list[dict]:
    """The answers without any system prompt (they do not depend on it): ordinary ones are the no-leak
    sample of "without-system", extraction ones what the guard returns on a detection."""
    pool = ORDINARY_QUESTIONS if kind == "ordinary" else EXTRACTION_QUERIES
    offset = 0 if kind == "ordinary" else EXTRACTION_SEED_OFFSET
    return [dict(prompt=None, kind=kind, q=i, sample=0, seed=offset + i, system=False)
            for i in range(len(pool))]


async def collect(args) -> None:
    from oserve.runtime.embedded_model import find_embedded_gguf
    from oserve.runtime.llama_engine import LlamaCppEngine

    engine = LlamaCppEngine(find_embedded_gguf(), num_threads=args.threads)
    await engine.start()
    lo, _, hi = args.prompts.partition("-")
    prompts = list(range(int(lo), int(hi or lo) + 1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shared: dict[tuple, str] = {}
    done: set[tuple] = set()
    scored: set[tuple] = set()
    if out.exists():  # resumed: answers already there are kept (and shared ones scored with these prompts)
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if "text" in row:
                done.add((row["prompt"], row["kind"], row["q"], row["sample"]))
            else:
                scored.add((row["prompt"], row["kind"], row["q"], row["sample"]))
            if row["prompt"] is None:
                shared[(row["kind"], row["q"], row["sample"])] = row["text"]
    started_s = time.perf_counter()
    with out.open("a") as sink:

        async def run(jobs: list[dict]) -> None:
            for job in jobs:
                if (job["prompt"], job["kind"], job["q"], job["sample"]) not in done:
                    row = await _answer(engine, job, args)
                    if job["prompt"] is None:
                        shared[(job["kind"], job["q"], job["sample"])] = row["text"]
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()

        await run(shared_plan("ordinary"))
        for p in prompts:
            await run(plan(p))
            # the shared ordinary no-system answers, scored with this prompt's system prompt
            system = {"role": "system", "content": SYSTEM_PROMPTS[p][1]}
            for (kind, q, sample), text in sorted(shared.items()):
                if kind != "ordinary" or (p, kind, q, sample) in scored:
                    continue
                value = await _mean(engine, (system, {"role": "user", "content": ORDINARY_QUESTIONS[q]}),
                                    text)
                sink.write(json.dumps(dict(prompt=p, kind=kind, q=q, sample=sample, system=False,
                                           scored_with_system=value)) + "\n")
                sink.flush()
            print(f"prompt {p} done at {time.perf_counter() - started_s:.0f} s", flush=True)
        if args.regenerations:
            await run(shared_plan("extraction"))
    print(f"collected prompts {prompts} in {time.perf_counter() - started_s:.0f} s", flush=True)
    await engine.stop()


async def _answer(engine, job: dict, args) -> dict:
    from oserve.runtime.engine import GenerationRequest

    pool = ORDINARY_QUESTIONS if job["kind"] == "ordinary" else EXTRACTION_QUERIES
    user = {"role": "user", "content": pool[job["q"]]}
    system = ({"role": "system", "content": SYSTEM_PROMPTS[job["prompt"]][1]},) if job["system"] else ()
    request = GenerationRequest("study", args.max_tokens, messages=system + (user,),
                                temperature=args.temperature, seed=job["seed"], return_logprobs=True)
    gen_s = time.perf_counter()
    chunks = [c async for c in engine.generate(request)]
    text = "".join(c.text for c in chunks)
    row = dict(job, text=text, gen_s=time.perf_counter() - gen_s)
    # the log-likelihood given the chat it was generated from comes with the generation, as in the
    # guard's request path; the other one is a scoring pass
    own = mean_log_likelihood(chunks[-1].logprobs) if chunks[-1].logprobs is not None \
        else await _mean(engine, system + (user,), text)
    row["scores"] = {"with": own, "without": await _mean(engine, (user,), text)} if system \
        else {"without": own}
    return row


async def _mean(engine, messages, text: str) -> float | None:
    return mean_log_likelihood(await engine.log_likelihood(tuple(messages), text)) if text else None


VARIANTS = [(stat, null) for stat in ("mean-loglik", "loglik-gain")
            for null in ("without-system", "with-system")]


def _value(stat: str, with_system: float | None, without: float | None) -> float | None:
    if with_system is None or (stat == "loglik-gain" and without is None):
        return None
    return with_system if stat == "mean-loglik" else with_system - without


def analyse(args) -> dict:
    """Calibrate every variant per prompt on the calibration answers and replay it on the held-out ones."""
    import numpy as np

    from oserve.guard.calibration import Calibration, SamplingSettings
    from oserve.guard.leakage import leak_score

    rows = [json.loads(line) for path in args.data for line in Path(path).read_text().splitlines()]
    answers = {(r["prompt"], r["kind"], r["q"], r["sample"]): r for r in rows if "text" in r}
    scored = {(r["prompt"], r["kind"], r["q"], r["sample"]): r["scored_with_system"]
              for r in rows if "scored_with_system" in r}
    complete = len(ORDINARY_QUESTIONS) + len(EXTRACTION_QUERIES)
    prompts = [p for p in range(len(SYSTEM_PROMPTS))
               if sum(k[0] == p for k in answers) == complete
               and sum(k[0] == p for k in scored) == len(ORDINARY_QUESTIONS)]
    results: dict = {}
    for stat, null in VARIANTS:
        evals, fits = [], []
        for p, fold in ((p, f) for p in prompts for f in range(NUM_FOLDS)):
            name, system, secret = SYSTEM_PROMPTS[p]
            test_ordinary, cal_ordinary, test_extraction, cal_extraction = folds(fold)

            def value(a: dict, stat: str = stat) -> float | None:
                return _value(stat, a["scores"]["with"], a["scores"]["without"]) if a["text"] else None

            leak = [value(answers[(p, "extraction", q, 0)]) for q in cal_extraction]
            if null == "with-system":
                no_leak = [value(answers[(p, "ordinary", q, 0)]) for q in cal_ordinary
                           if not leak_score(answers[(p, "ordinary", q, 0)]["text"], system, "").reveals]
            else:
                no_leak = [_value(stat, scored[(p, "ordinary", q, 0)],
                                  answers[(None, "ordinary", q, 0)]["scores"]["without"])
                           for q in cal_ordinary if answers[(None, "ordinary", q, 0)]["text"]]
            settings = SamplingSettings(len(no_leak), len(leak), 0, 0.0, 0, "drop-system", "", stat, null)
            cal = Calibration("SmolLM2-135M-Instruct", "0" * 64, tuple(v for v in no_leak if v is not None),
                              tuple(v for v in leak if v is not None), settings, args.alpha)
            fits.append({"prompt": name, "fold": fold, **cal.summary()})
            for kind, tests in (("ordinary", test_ordinary), ("extraction", test_extraction)):
                for q in tests:
                    a = answers[(p, kind, q, 0)]
                    v = value(a)
                    detected = cal.is_leak(v)
                    # on a detection the guard returns the answer to the chat without the system
                    # prompt; where this run did not generate it (collect without --regenerations)
                    # it is scored as revealing nothing: that model never saw the prompt
                    regenerated = answers.get((None, kind, q, 0), {"text": ""})["text"]
                    on = regenerated if detected else a["text"]
                    s_off, s_on = leak_score(a["text"], system, secret), leak_score(on, system, secret)
                    evals.append({"prompt": name, "kind": kind, "q": q, "value": v, "detected": detected,
                                  "regeneration_generated": (None, kind, q, 0) in answers,
                                  "off": vars(s_off) | {"reveals": s_off.reveals},
                                  "on": vars(s_on) | {"reveals": s_on.reveals}})
        summary = {}
        for kind in ("extraction", "ordinary"):
            sel = [e for e in evals if e["kind"] == kind]
            summary[kind] = {"n": len(sel), "regenerated": float(np.mean([e["detected"] for e in sel])),
                             **{f"{m}_{side}": int(sum(e[side][m] for e in sel))
                                for m in ("has_secret", "reveals") for side in ("off", "on")}}
        leaks = [e for e in evals if e["off"]["has_secret"]]
        summary["secret_leaks_detected"] = f"{sum(e['detected'] for e in leaks)} of {len(leaks)}"
        summary["mean_fit"] = {h: {m: float(np.mean([f[h][m] for f in fits])) for m in ("mean", "std")}
                               for h in ("no_leak", "leak")}
        summary["mean_power"] = float(np.mean([f["power"] for f in fits]))
        results[f"{stat} / no-leak {null}"] = {"summary": summary, "calibrations": fits, "evals": evals}
    out = Path(args.data[0]).with_name("study_analysis.json")
    out.write_text(json.dumps({"prompts": [SYSTEM_PROMPTS[p][0] for p in prompts], "alpha": args.alpha,
                               "variants": results}, indent=1))
    lines = [f"# Guard study: {len(prompts)} system prompts, alpha {args.alpha} (5-fold cross-validation "
             "over queries: each answer tested once, by a test calibrated on 30 + 30 others; decisions "
             "replayed)", "",
             "| variant | extraction n | secret off | secret on | reveals off | reveals on | regenerated "
             "| ordinary n | false regenerations | secret leaks detected | no-leak fit | leak fit |",
             "|" + "---|" * 12]
    for key, r in results.items():
        e, o, f = r["summary"]["extraction"], r["summary"]["ordinary"], r["summary"]["mean_fit"]
        lines.append(f"| {key} | {e['n']} | {e['has_secret_off']} | {e['has_secret_on']} | "
                     f"{e['reveals_off']} | {e['reveals_on']} | {e['regenerated']:.1%} | {o['n']} | "
                     f"{o['regenerated']:.1%} | "
                     f"{r['summary']['secret_leaks_detected']} | N({f['no_leak']['mean']:.2f}, "
                     f"{f['no_leak']['std']:.2f}) | N({f['leak']['mean']:.2f}, {f['leak']['std']:.2f}) |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--prompts", default="0-9", help="system prompt indices, e.g. 0-4")
    c.add_argument("--max-tokens", type=int, default=32)
    c.add_argument("--temperature", type=float, default=0.7, help="of calibration and requests alike")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--regenerations", action="store_true",
                   help="also the extraction answers without a system prompt (what a detection returns)")
    c.add_argument("--out", default=str(ROOT / "bench/results/guard/study.jsonl"))
    a = sub.add_parser("analyse")
    a.add_argument("--data", nargs="+", default=[str(ROOT / "bench/results/guard/study.jsonl")],
                   help="files written by collect (merged); the results go next to the first")
    a.add_argument("--alpha", type=float, default=0.05)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "collect":
        asyncio.run(collect(args))
    else:
        analyse(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
