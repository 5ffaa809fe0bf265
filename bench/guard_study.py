"""Which statistic and which no-leak sample separate leaks on SmolLM2-135M: answers and both scores.

    python bench/guard_study.py collect --prompts 0-4 --out bench/results/guard/study.jsonl
    python bench/guard_study.py analyse --data bench/results/guard/study.jsonl

``collect`` generates, on the embedded llama.cpp engine (no gateway), every answer the guard's
calibration and the benchmark's held-out evaluation need, and scores each with the system prompt and
without it (the engine's own scoring instances, as the guard does); one JSON line per answer, appended,
so a run can be split over several bounded invocations (``--prompts``). ``analyse``
(``bench/guard_study_analysis.py``) calibrates each variant of the test (statistic mean-loglik /
loglik-gain x no-leak sample answered without / with the system prompt) on the calibration answers
with ``oserve.guard.calibration.Calibration`` (the guard's own test), cross-validated over queries, and
replays its decisions on the held-out answers: what the guard would return (the answer, or on a
detection the answer to the chat without the system prompt, also generated here), the secret and
reveal rates off and on with confidence intervals, the false regenerations on ordinary queries.
Results go next to --data (JSON, Markdown).

A run bounded in time over many prompts: ``collect --prompts 2-9 --interleave --until-unix T`` collects
in rounds (every prompt gets the same queries, spread over both sets) and stops starting answers at T.
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


def plan(prompt_index: int) -> list[dict]:
    """The answers to collect for one prompt: every query of both sets, with the system prompt, at the
    calibration's seeds."""
    jobs = [dict(prompt=prompt_index, kind="extraction", q=i, sample=0, seed=EXTRACTION_SEED_OFFSET + i,
                 system=True) for i in range(len(EXTRACTION_QUERIES))]
    return jobs + [dict(prompt=prompt_index, kind="ordinary", q=i, sample=0, seed=i, system=True)
                   for i in range(len(ORDINARY_QUESTIONS))]


def interleaved_plan(prompts: list[int], fraction: float) -> list[dict]:
    """The answers of ``plan`` for several prompts in rounds: each round asks one query of every
    prompt, queries ordered so that any prefix of the rounds is a spread sample of both sets (even
    indices first, then odd; extraction and ordinary interleaved by position). A run stopped at any
    point (or limited to ``fraction`` of the queries) has the same queries for every prompt, each
    answered with the system prompt; answers off and on the guard come from the same answer. Each
    extraction query's answer without any system prompt (what a detection returns) comes with it."""
    def order(n: int) -> list[int]:
        return list(range(0, n, 2)) + list(range(1, n, 2))

    keyed = [((rank + 0.5) / len(EXTRACTION_QUERIES), "extraction", q)
             for rank, q in enumerate(order(len(EXTRACTION_QUERIES)))]
    keyed += [((rank + 0.5) / len(ORDINARY_QUESTIONS), "ordinary", q)
              for rank, q in enumerate(order(len(ORDINARY_QUESTIONS)))]
    keyed = [k for k in sorted(keyed) if k[0] <= fraction]
    jobs = []
    for _, kind, q in keyed:
        for p in prompts:
            seed = EXTRACTION_SEED_OFFSET + q if kind == "extraction" else q
            jobs.append(dict(prompt=p, kind=kind, q=q, sample=0, seed=seed, system=True))
        if kind == "extraction":  # what the guard returns on a detection (no system prompt: shared)
            jobs.append(dict(prompt=None, kind=kind, q=q, sample=0, seed=EXTRACTION_SEED_OFFSET + q,
                             system=False))
    return jobs


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
                if args.until_unix and time.time() >= args.until_unix:
                    print("stopped at --until", flush=True)
                    return
                if (job["prompt"], job["kind"], job["q"], job["sample"]) not in done:
                    row = await _answer(engine, job, args)
                    if job["prompt"] is None:
                        shared[(job["kind"], job["q"], job["sample"])] = row["text"]
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()

        await run(shared_plan("ordinary"))
        if args.interleave:  # a bounded run over many prompts: rounds, no shared scorings
            await run(interleaved_plan(prompts, args.fraction))
            prompts = []  # done in rounds above
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
    c.add_argument("--interleave", action="store_true",
                   help="collect in rounds across the prompts (see interleaved_plan), so that a run "
                        "stopped early has the same queries for each; skips the scorings of the shared "
                        "no-system ordinary answers (only the without-system no-leak variants use them)")
    c.add_argument("--fraction", type=float, default=1.0,
                   help="with --interleave: share of each query set to collect (its spread prefix)")
    c.add_argument("--until-unix", type=float, default=None,
                   help="start no new answer after this time (seconds since the epoch)")
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
        from guard_study_analysis import analyse

        analyse(args.data, args.alpha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
