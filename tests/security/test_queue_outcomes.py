"""The queue counts a job done only when the server says it succeeded (library tier; the same
cases against a real ComfyUI are in tests/server/test_security_server.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sesahand.queue import ComfyClient, JobResult, PromptRejected, QueueReport, format_summary, history_outcome

NODE_ERRORS = {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                 "details": "ckpt_name: 'missing.safetensors' not in []", "extra_info": {}}],
                     "dependent_outputs": ["9"], "class_type": "CheckpointLoaderSimple"}}


class _Handler(BaseHTTPRequestHandler):
    """/prompt answers HTTP 200 with node_errors (what ComfyUI does when only some outputs
    fail validation); /queue and /interrupt record what they were asked."""

    calls: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.calls.append((self.path, body))
        reply = b""
        if self.path == "/prompt":
            reply = json.dumps({"prompt_id": body["prompt_id"], "number": 0, "node_errors": NODE_ERRORS}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):  # noqa: N802 (no websocket here: the client falls back to polling)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def partial_server():
    _Handler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Handler.calls
    server.shutdown()
    server.server_close()


def test_http_200_with_node_errors_is_a_validation_failure(partial_server):
    url, calls = partial_server
    client = ComfyClient(url, timeout=5, poll_s=0.1)
    try:
        with pytest.raises(PromptRejected, match=r"node 4 \(CheckpointLoaderSimple\): Value not in list: "
                                                 r"ckpt_name: 'missing.safetensors'"):
            client.submit({"1": {}}, "abc")
    finally:
        client.close()
    # the prompt ComfyUI queued anyway (its valid outputs) is taken off the queue or interrupted
    assert ("/queue", {"delete": ["abc"]}) in calls and ("/interrupt", {"prompt_id": "abc"}) in calls


@pytest.mark.parametrize("entry", [
    {},                                                                       # no status at all
    {"status": None, "outputs": {}},
    {"status": {"status_str": "success", "completed": False, "messages": []}},
    {"status": {"completed": True, "messages": []}},                         # no status_str
    {"status": {"status_str": "error", "completed": False, "messages": [["bogus"]]}},
])
def test_only_a_reported_success_counts_as_done(entry):
    outcome, message = history_outcome(entry)
    assert outcome == "error" and message


def test_the_summary_names_done_jobs_without_outputs():
    results = [JobResult(0, "done", "http://a", "p0", 1, {}, ["job_00000/a.png"]),
               JobResult(1, "done", "http://a", "p1", 1, {}, []),
               JobResult(2, "done", "http://a", "p2", 1, {}, [])]
    summary = format_summary(QueueReport(results, 3))
    assert "3 done" in summary
    assert "2 done job(s) produced no output files (the workflow saves nothing, or only previews): job(s) 1, 2" \
        in summary
