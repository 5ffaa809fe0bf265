"""Test double shared by the server stand-ins (``vllm_standin``, ``lmdeploy_standin``): a tiny
OpenAI-compatible server process, standard library only (the stand-ins run as their own processes).

``run(port, metrics)`` serves ``/health``, ``/metrics`` (the text ``metrics()`` returns) and a streamed
``/v1/completions`` or ``/v1/chat/completions`` of 3 tokens. It forks a child that sleeps, like vLLM's
engine core or TurboMind's workers, and writes its pid to ``$STANDIN_CHILD_FILE``, so that stopping the
replica can be checked to take the whole process group. ``STANDIN_EXIT_CODE`` makes it print a line and
exit at once (a server that fails to start); ``STANDIN_START_DELAY_S`` delays serving (a slow start).
"""

import json
import os
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def handler_for(metrics: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._send(200, b'{"status": "healthy"}')
            elif self.path == "/metrics":
                self._send(200, metrics().encode(), "text/plain")
            else:
                self._send(404, b"{}")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            chat = self.path.endswith("/chat/completions")

            def choice(text, finish):
                return ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat else
                        {"index": 0, "text": text, "finish_reason": finish})

            chunks = [{"choices": [choice(t, None)]} for t in ("a", "b", "c")]
            chunks.append({"choices": [choice("", "length")],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self._send(200, body.encode(), "text/event-stream")

    return Handler


def run(port: int, metrics: Callable[[], str]) -> None:
    if os.environ.get("STANDIN_EXIT_CODE"):
        print("standin: failing to start as asked", flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT_CODE"]))
    child = os.fork()
    if child == 0:  # the "engine core"
        time.sleep(600)
        os._exit(0)
    Path(os.environ["STANDIN_CHILD_FILE"]).write_text(str(child))
    time.sleep(float(os.environ.get("STANDIN_START_DELAY_S", "0")))  # a slow start (loading weights)
    ThreadingHTTPServer(("127.0.0.1", port), handler_for(metrics)).serve_forever()
