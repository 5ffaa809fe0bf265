"""The load tests' HTTP client: one chat completion, streamed or not, and what became of it.

Every request a load test sends ends in one outcome: ``ok`` (answered in full), an explicit failure
(``http_<status>`` with an OpenAI error body, or ``stream_error``: an error event inside the stream), or
``lost: <why>`` (anything else: a dropped connection, a timeout, a truncated stream without an error, a
wrong answer). The reliability, chaos and real-vLLM tests all require zero lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx


async def chat_outcome(client: httpx.AsyncClient, body: dict, is_full: Callable[[str], bool]) -> str:
    """Send ``body`` to ``/v1/chat/completions`` (streamed when ``body["stream"]``); ``is_full`` judges
    the answer's text."""
    try:
        if not body.get("stream"):
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code == 200:
                ok = is_full(response.json()["choices"][0]["message"]["content"])
                return "ok" if ok else "lost: wrong answer"
            explicit = "message" in response.json().get("error", {})
            return f"http_{response.status_code}" if explicit else f"lost: {response.text[:80]}"
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raw = await response.aread()
                explicit = "message" in json.loads(raw).get("error", {})
                return f"http_{response.status_code}" if explicit else f"lost: {raw[:80]!r}"
            text, done = [], False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return "stream_error"
                text += [c["delta"].get("content") or "" for c in event["choices"]]
            if done and is_full("".join(text)):
                return "ok"
            return f"lost: stream {'ended' if done else 'cut'} after {len(''.join(text))} characters"
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
        return f"lost: {type(exc).__name__} {exc}"[:120]


def outcome_kind(outcome: str) -> str:
    """``completed``, ``error`` (failed explicitly) or ``lost``."""
    if outcome == "ok":
        return "completed"
    return "lost" if outcome.startswith("lost") else "error"


def count_outcomes(outcomes: list[str]) -> dict[str, int]:
    kinds = [outcome_kind(o) for o in outcomes]
    return {k: kinds.count(k) for k in ("completed", "error", "lost")}


__all__ = ["chat_outcome", "count_outcomes", "outcome_kind"]
