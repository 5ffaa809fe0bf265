"""Serving-runtime benchmark: gateway overhead with zero-time fake engines, and the embedded real model.

    python bench/runtime_bench.py [--quick] [--skip-embedded] [--out bench/results/runtime/runtime_bench.json]

Gateway overhead: a gateway (uvicorn, in its own process) over 2 fake replicas that answer at once, hit
by a minimal keep-alive HTTP/1.1 client in this process: (a) one connection, sequential requests: the
latency of a request through the whole gateway (HTTP parse, validation, typing, dispatch, response);
(b) 64 connections for a fixed time: requests per second. The same client against a bare ASGI app on the
same uvicorn gives the HTTP stack's own share. (c) In-process: router + handler without HTTP.
Embedded model: ``oserve serve`` (SmolLM2-135M, llama.cpp), single-stream tokens/s and a short replay.
All traffic stays on 127.0.0.1; every loop is bounded in count and time. Numbers go to --out (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BODY = json.dumps({"model": "fake-model", "max_tokens": 1,
                   "messages": [{"role": "user", "content": "Hello there, how are you?"}]}).encode()


def serve_fake(kind: str) -> None:
    """Child process: a gateway (or a bare ASGI app) on 127.0.0.1:0; prints its port."""
    import uvicorn

    from oserve.costmodel.replica_config import ReplicaConfig
    from oserve.runtime.fake_engine import FakeEngine
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import bind_socket
    from oserve.runtime.serving import RuntimeConfig, ServingRuntime
    from oserve.runtime.static_plan import static_plan

    if kind == "bare":
        payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": " ok"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}}).encode()

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
    else:
        plan = static_plan("fake-model", [ReplicaConfig("cpu")] * 2, ["T0", "T1"])
        runtime = ServingRuntime("fake-model", plan, lambda r: FakeEngine(f"fake-r{r.replica_id}"),
                                 lambda n: int(n >= 100), config=RuntimeConfig(max_inflight_per_replica=4096))
        app = create_app(runtime)
    sock = bind_socket("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, proxy_headers=False)
                   ).run(sockets=[sock])


class Conn:
    """A minimal keep-alive HTTP/1.1 client connection (the client must cost far less than the server)."""

    def __init__(self, port: int) -> None:
        self.port = port
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n")
        self.request = head.encode() + BODY

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def call(self) -> float:
        start = time.perf_counter()
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await self.reader.readexactly(length)
        return time.perf_counter() - start


async def sequential(port: int, num: int) -> list[float]:
    conn = Conn(port)
    await conn.open()
    for _ in range(min(200, num // 5)):  # warm-up
        await conn.call()
    return [await conn.call() for _ in range(num)]


async def concurrent(port: int, num_conns: int, duration_s: float) -> tuple[float, list[float]]:
    conns = [Conn(port) for _ in range(num_conns)]
    await asyncio.gather(*(c.open() for c in conns))
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < stop_at:
            latencies.append(await conn.call())

    await asyncio.gather(*(worker(c) for c in conns[:num_conns]))  # warm-up round is the first second
    start = time.perf_counter()
    latencies.clear()
    stop_at = start + duration_s
    await asyncio.gather(*(worker(c) for c in conns))
    return len(latencies) / (time.perf_counter() - start), latencies


def start_child(kind: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1e3, 3)


def http_overhead(kind: str, num_seq: int, duration_s: float) -> dict:
    proc, port = start_child(kind)
    try:
        seq = asyncio.run(sequential(port, num_seq))
        rps, lat = asyncio.run(concurrent(port, 64, duration_s))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"server": kind, "sequential_requests": num_seq, "seq_p50_ms": ms(seq, 50),
            "seq_p90_ms": ms(seq, 90), "seq_p99_ms": ms(seq, 99), "concurrency": 64,
            "throughput_rps": round(rps, 1), "loaded_p50_ms": ms(lat, 50), "loaded_p99_ms": ms(lat, 99)}


def inprocess_overhead(num: int) -> dict:
    from oserve.costmodel.replica_config import ReplicaConfig
    from oserve.runtime.fake_engine import FakeEngine
    from oserve.runtime.gateway.handler import CompletionHandler
    from oserve.runtime.gateway.schemas import ChatCompletionRequest, parse_body
    from oserve.runtime.serving import ServingRuntime
    from oserve.runtime.static_plan import static_plan

    async def main() -> list[float]:
        plan = static_plan("fake-model", [ReplicaConfig("cpu")] * 2, ["T0", "T1"])
        runtime = ServingRuntime("fake-model", plan, lambda r: FakeEngine(), lambda n: int(n >= 100))
        handler = CompletionHandler(runtime)
        out = []
        async with runtime:
            for _ in range(num):
                start = time.perf_counter()
                body = parse_body(ChatCompletionRequest, BODY)
                await handler.complete(body, await handler.open(body))
                out.append(time.perf_counter() - start)
        return out

    lat = asyncio.run(main())
    return {"requests": num, "p50_us": round(float(np.percentile(lat, 50)) * 1e6, 1),
            "p99_us": round(float(np.percentile(lat, 99)) * 1e6, 1)}


def embedded_model(num_requests: int) -> dict:
    import openai

    from oserve.runtime.loadgen import BenchConfig, run_bench
    from oserve.workload import load_trace

    proc = subprocess.Popen([sys.executable, "-m", "oserve.cli.main", "serve", "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
    url = next(line.split(" at ")[1].strip() for line in proc.stdout if line.startswith("oserve: serving"))
    try:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        rates = []
        story = [{"role": "user", "content": "Write a long story about a cat who learns to sail."}]
        for _ in range(3):
            first, n = None, 0
            for chunk in client.chat.completions.create(model=model, messages=story, max_tokens=128,
                                                        temperature=0.0, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    n += 1
            if first is not None and n > 1:
                rates.append((n - 1) / (time.perf_counter() - first))
        config = BenchConfig(url=url.removesuffix("/v1"), rate_scale=1.0, max_requests=num_requests,
                             max_duration_s=240.0, max_input_tokens=256, max_output_tokens=32,
                             endpoint="chat")
        report = asyncio.run(run_bench(config, load_trace("azure-conv")))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"model": model, "single_stream_decode_tok_s": [round(r, 1) for r in rates],
            "replay": json.loads(report.to_json())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--out", default="bench/results/runtime/runtime_bench.json")
    args = parser.parse_args()
    if args.child:
        serve_fake(args.child)
        return
    num_seq, duration_s = (500, 3.0) if args.quick else (3000, 10.0)
    load1 = os.getloadavg()[0]
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "loadavg_1m_at_start": round(load1, 2)},
               "bare_asgi": http_overhead("bare", num_seq, duration_s),
               "gateway": http_overhead("gateway", num_seq, duration_s),
               "in_process": inprocess_overhead(num_seq)}
    results["gateway_added_p50_ms"] = round(results["gateway"]["seq_p50_ms"]
                                            - results["bare_asgi"]["seq_p50_ms"], 3)
    if not args.skip_embedded:
        results["embedded"] = embedded_model(10 if args.quick else 30)
    results["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
