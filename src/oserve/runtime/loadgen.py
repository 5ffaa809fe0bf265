"""Replay a trace against any OpenAI-compatible server and measure TTFT, TPOT, end-to-end latency.

Each trace request becomes a streamed completion whose prompt has about the trace's input length (a
synthetic text of ~4 characters per token) and whose ``max_tokens`` is the trace's output length, sent
at the trace's arrival time divided by ``rate_scale`` (or, with ``concurrency``, in a closed loop that
keeps that many requests in flight). The run is bounded by a request count and a time
limit, and by default only targets loopback addresses.

Times are read from an injected clock (``oserve.runtime.clock``; wall time by default): given the
server's ``ScaledClock``, the replay is compressed as the server's time is and every latency is
reported in the server's seconds, which is how a trace of many minutes is replayed in seconds against
a server whose engines and controller run on that clock. ``start_at_s`` pins trace time 0 to a time of
that clock (e.g. a multiple of the controller's check interval, so its windows are the simulator's).
"""

from __future__ import annotations

import asyncio
import csv
import ipaddress
import json
import socket
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import httpx
import numpy as np

from oserve.common.errors import ConfigError
from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.engine import CHARS_PER_TOKEN_ESTIMATE
from oserve.workload.latency_summary import latency_summary
from oserve.workload.request_types import fit_request_types
from oserve.workload.trace import Trace

WORDS = ("the", "and", "for", "you", "are", "was", "not", "but", "can", "all", "one", "has")


@dataclass(frozen=True)
class BenchConfig:
    url: str
    model: str | None = None
    rate_scale: float = 1.0
    max_requests: int = 200
    max_duration_s: float = 120.0
    max_input_tokens: int = 1024
    max_output_tokens: int = 256
    endpoint: str = "completions"  # or "chat"
    allow_remote: bool = False
    request_timeout_s: float = 300.0
    num_types: int = 4                 # per-type latencies by the trace's request types (0: none)
    slo_ttft_s: float | None = None    # SLO attainment against these bounds (None: not reported)
    slo_tpot_s: float | None = None
    concurrency: int | None = None  # closed loop: this many requests in flight, arrival times ignored


@dataclass
class RequestRecord:
    status: str  # "ok", "http_<code>", "error"
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    message: str = ""
    type_id: int = -1  # the trace request's type (online typing of its input length)
    sent_s: float | None = None  # when it was sent, seconds after the replay's trace time 0
    input_tokens: int = 0  # the prompt length asked for (the synthetic prompt's nominal tokens)


@dataclass
class BenchReport:
    """Counts and rates of a replay, and ``latency``: the shared latency/SLO summary
    (``oserve.workload.latency_summary``: ``p50_ttft_s`` ... ``mean_e2e_s``, ``slo_attainment``,
    ``per_type``) with the same keys as ``oserve simulate``; the JSON form has them at the top level."""

    url: str
    model: str
    num_sent: int
    num_ok: int
    num_failed: int
    failures: dict[str, int]
    duration_s: float
    throughput_rps: float
    output_tokens_per_s: float
    latency: dict = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list, repr=False)  # in trace order

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("latency"))
        del out["records"]  # the JSON report is the summary; per request see write_records
        return out

    def write_records(self, path: str) -> None:
        """One CSV row per request in trace order: when it was sent, its status, TTFT, end-to-end
        latency, prompt tokens asked for and output tokens received."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["request", "sent_s", "status", "ttft_s", "e2e_s", "input_tokens", "output_tokens",
                        "type"])
            for i, r in enumerate(self.records):
                w.writerow([i, _cell(r.sent_s), r.status, _cell(r.ttft_s), _cell(r.e2e_s), r.input_tokens,
                            r.output_tokens, r.type_id])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        def row(name: str, metric: str) -> str:
            cells = [(k, self.latency.get(f"{k}_{metric}")) for k in ("p50", "p90", "p99", "mean")]
            if all(v is None for _, v in cells):
                return f"{name:6s} -"
            return f"{name:6s} " + "  ".join(f"{k}={v * 1e3:9.1f} ms" for k, v in cells if v is not None)

        slo = self.latency.get("slo_attainment")
        return "\n".join([
            f"{self.url}  model={self.model}",
            f"sent {self.num_sent}, ok {self.num_ok}, failed {self.num_failed} {self.failures or ''}",
            f"duration {self.duration_s:.1f} s, {self.throughput_rps:.2f} req/s, "
            f"{self.output_tokens_per_s:.1f} output tok/s",
            row("TTFT", "ttft_s"), row("TPOT", "tpot_s"), row("E2E", "e2e_s")]
            + ([f"SLO attainment {slo:.1%}"] if slo is not None else []))


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def check_target(url: str, allow_remote: bool) -> None:
    host = urlparse(url).hostname
    if not host:
        raise ConfigError(f"--url: not a URL: {url!r}")
    if allow_remote:
        return
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        raise ConfigError(f"--url: cannot resolve {host!r}") from None
    if not address.is_loopback:
        raise ConfigError(f"--url: {host} ({address}) is not a loopback address; the load generator "
                          "targets this machine only unless --allow-remote is given")


def synthetic_prompt(num_tokens: int) -> str:
    """Words of exactly ``4 x num_tokens`` characters, so that a server without a tokenizer (the
    4-characters-per-token estimate) counts exactly ``num_tokens``; a real tokenizer counts about as
    many."""
    words, length, i = [], 0, 0
    while length < num_tokens * CHARS_PER_TOKEN_ESTIMATE:
        word = WORDS[i % len(WORDS)]
        words.append(word)
        length += len(word) + 1
        i += 1
    return " ".join(words)[:num_tokens * CHARS_PER_TOKEN_ESTIMATE]


def summarize(config: BenchConfig, model: str, records: list[RequestRecord], duration_s: float,
              type_names: list[str] | None = None) -> BenchReport:
    ok = [r for r in records if r.status == "ok"]
    failures: dict[str, int] = {}
    for r in records:
        if r.status != "ok":
            failures[r.status] = failures.get(r.status, 0) + 1
    nan = float("nan")
    ttft = [r.ttft_s if r.ttft_s is not None else nan for r in records]
    e2e = [r.e2e_s if r.e2e_s is not None and r.status == "ok" else nan for r in records]
    tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1)
            if r.status == "ok" and r.output_tokens > 1 and r.ttft_s is not None and r.e2e_s is not None
            else nan for r in records]
    typed = type_names is not None and all(r.type_id >= 0 for r in records)
    latency = latency_summary(ttft, tpot, e2e, [r.status == "ok" for r in records], config.slo_ttft_s,
                              config.slo_tpot_s, [r.type_id for r in records] if typed else None,
                              type_names if typed else None)
    duration_s = max(duration_s, 1e-9)
    return BenchReport(
        url=config.url, model=model, num_sent=len(records), num_ok=len(ok),
        num_failed=len(records) - len(ok), failures=failures, duration_s=duration_s,
        throughput_rps=len(ok) / duration_s,
        output_tokens_per_s=sum(r.output_tokens for r in ok) / duration_s, latency=latency,
        records=list(records))


async def _one(client: httpx.AsyncClient, config: BenchConfig, model: str, input_tokens: int,
               output_tokens: int, clock: Clock, origin_s: float = 0.0) -> RequestRecord:
    """One streamed request; ``origin_s`` is the replay's trace time 0 on ``clock``."""
    sent_s = clock.now_s() - origin_s
    record = await _send(client, config, model, min(input_tokens, config.max_input_tokens),
                         output_tokens, clock)
    record.input_tokens, record.sent_s = min(input_tokens, config.max_input_tokens), sent_s
    return record


async def _send(client: httpx.AsyncClient, config: BenchConfig, model: str, input_tokens: int,
                output_tokens: int, clock: Clock) -> RequestRecord:
    prompt = synthetic_prompt(input_tokens)
    body: dict = {"model": model, "max_tokens": min(output_tokens, config.max_output_tokens),
                  "stream": True, "stream_options": {"include_usage": True}}
    if config.endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    start = clock.now_s()
    record = RequestRecord("error")
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")
                return RequestRecord(f"http_{response.status_code}", message=text[:200])
            chunks, usage_tokens = 0, None
            async for line in response.aiter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    return RequestRecord("stream_error", message=str(event["error"])[:200])
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens")
                for choice in event.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or choice.get("text")
                    if text:
                        if record.ttft_s is None:
                            record.ttft_s = clock.now_s() - start
                        chunks += 1
            record.e2e_s = clock.now_s() - start
            record.output_tokens = usage_tokens if usage_tokens is not None else chunks
            record.status = "ok"
    except httpx.HTTPError as exc:
        record.message = f"{type(exc).__name__}: {exc}"
    return record


async def _resolve_model(client: httpx.AsyncClient, model: str | None) -> str:
    if model:
        return model
    response = await client.get("/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def _trace_types(trace: Trace, num_types: int) -> tuple[list[int], list[str] | None]:
    """The online type of each trace request, fitted on the whole trace as ``oserve serve --types``
    does (same seed), so that the client's per-type rows are the server's types."""
    if num_types <= 0 or len(trace) < num_types:
        return [-1] * len(trace), None
    types = fit_request_types(trace, num_types, 0)
    # named T0..T<k-1> (lightest first), as in the simulator's summary
    return [int(t) for t in types.classify_online(trace.input_tokens)], [f"T{k}" for k in range(types.k)]


async def run_bench(config: BenchConfig, trace: Trace, clock: Clock | None = None,
                    start_at_s: float | None = None) -> BenchReport:
    """Replay ``trace`` (at most ``max_requests`` of it, for at most ``max_duration_s``) on ``clock``
    (wall time by default), trace time 0 at ``start_at_s`` of that clock (default: now). The report's
    records are in trace order."""
    clock = clock or WallClock()
    check_target(config.url, config.allow_remote)
    type_ids, type_names = _trace_types(trace, config.num_types)
    trace = trace.scaled(config.rate_scale).head(config.max_requests)
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    base = config.url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(base_url=base, limits=limits,
                                 timeout=httpx.Timeout(config.request_timeout_s, connect=10.0)) as client:
        model = await _resolve_model(client, config.model)
        if config.concurrency is not None:
            return await _run_closed_loop(client, config, config.concurrency, model, trace, clock)
        start = clock.now_s() if start_at_s is None else start_at_s
        tasks = []
        for arrival_s, n_in, n_out in zip(trace.arrival_s, trace.input_tokens, trace.output_tokens):
            if arrival_s > config.max_duration_s:
                break
            delay_s = arrival_s - (clock.now_s() - start)
            if delay_s > 0:
                await clock.sleep(delay_s)
            tasks.append(asyncio.create_task(_one(client, config, model, int(n_in), int(n_out), clock,
                                                  start)))
        remaining_s = max(1.0, config.max_duration_s - (clock.now_s() - start))
        done, pending = await _wait(tasks, remaining_s, clock)
        for task in pending:
            task.cancel()
        clipped = np.minimum(trace.input_tokens, config.max_input_tokens)
        records = [t.result() if t in done else RequestRecord("timeout", sent_s=float(a), input_tokens=int(n))
                   for t, a, n in zip(tasks, trace.arrival_s, clipped)]
        for record, type_id in zip(records, type_ids):
            record.type_id = int(type_id)
        return summarize(config, model, records, clock.now_s() - start, type_names)


async def _wait(tasks: list[asyncio.Task], timeout_s: float, clock: Clock
                ) -> tuple[set[asyncio.Task], set[asyncio.Task]]:
    """``asyncio.wait`` for all of ``tasks``, bounded by ``timeout_s`` of ``clock``."""
    if not tasks:
        return set(), set()
    try:
        async with clock.timeout(timeout_s):
            await asyncio.wait(tasks)
    except TimeoutError:
        pass
    return {t for t in tasks if t.done()}, {t for t in tasks if not t.done()}


async def _run_closed_loop(client: httpx.AsyncClient, config: BenchConfig, concurrency: int,
                           model: str, trace: Trace, clock: Clock) -> BenchReport:
    """``concurrency`` (``config.concurrency``, given) workers take the trace's requests in order, each
    sending its next one as soon as its last one is answered (the arrival times are not used)."""
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    shapes = list(zip(trace.input_tokens, trace.output_tokens))
    records: list[RequestRecord] = []
    start = clock.now_s()

    async def worker() -> None:
        while shapes and clock.now_s() - start < config.max_duration_s:
            n_in, n_out = shapes.pop(0)
            records.append(await _one(client, config, model, int(n_in), int(n_out), clock, start))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(config, model, records, clock.now_s() - start)


__all__ = ["BenchConfig", "BenchReport", "RequestRecord", "check_target", "run_bench", "summarize",
           "synthetic_prompt"]
