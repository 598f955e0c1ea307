"""Shared helpers of the GlimpsePrune+ tests: a stub OpenAI-compatible judge on 127.0.0.1 and a tiny image set."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from pathlib import Path

from tests.conftest import make_image


def length_score(completion: str) -> float:
    """The stub judge's score of a completion: its length mod 5, over 4 (varied for random models' gibberish)."""
    return (len(completion) % 5) / 4


# --- a stub OpenAI-compatible server --------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        mode = self.server.mode  # type: ignore[attr-defined]
        if mode == "slow":
            time.sleep(0.5)
        if mode == "error":
            self.send_response(500)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        if mode == "length":
            m = re.search(r"Model answer: (.*)\nReply with", prompt, re.S)
            content = f"score: {length_score(m.group(1) if m else '')}"
        else:
            content = "score: 1" if "Model answer: cat" in prompt else "score: 0.25"
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        payload = b"not json{" if mode == "garbage" else json.dumps(reply if mode != "nochoices" else {"x": 1}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)

    def log_message(self, *a):
        pass


@contextlib.contextmanager
def stub_server(mode="ok"):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.mode, srv.requests = mode, []
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)



def image_set(root: Path, n: int = 4) -> Path:
    """``n`` records with small images of two sizes, written as a JSONL under ``root``; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        make_image(112 if i % 2 else 84, 84 if i % 2 else 56, 10 + i).save(root / f"im{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "image": f"im{i}.png", "question": f"what is shape {i}?",
                                 "answers": ["red"], "boxes": [[0, 0, 40, 28]]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"
