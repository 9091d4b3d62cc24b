"""CPU instructions per routed request, repeatable on a busy machine (callgrind counts
instructions, not seconds). Routes ``K`` requests in-process through the app (Starlette's test
client, a mock upstream transport, an event sink that drops events, or with ``--sink file`` the
file sink writing to a temporary directory, so its writer thread's serialisation is counted too)
after 20 warm-up requests.

Run it twice under callgrind, with K = 0 and K = 300, from the checkout to measure; the
difference of the two "Collected" totals over 300 is the instructions per request (imports and
start-up cancel out)::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.0 .venv/bin/python \\
        experiments/bench/request_instructions.py 0 --bundle .polyroute/bundle
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.300 .venv/bin/python \\
        experiments/bench/request_instructions.py 300 --bundle .polyroute/bundle
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.getcwd())  # the checkout being measured, not an installed copy

import httpx
from fastapi.testclient import TestClient

from router.app import create_app
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.events.file_sink import FileEventSink

ANSWER = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
    }
).encode()


def routed_app(config_path: str, bundle_path: str, sink: object) -> Any:
    """The app of ``config_path`` (tenants removed: open access) serving ``bundle_path``, every
    model answered by a mock transport with :data:`ANSWER`, events to ``sink``."""
    raw = load_config(config_path).model_dump()
    raw["tenants"] = []
    config = RouterConfig.model_validate(raw)
    bundle = PolicyBundle.load(bundle_path)

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=ANSWER, headers={"content-type": "application/json"})

    return create_app(config, bundle, sink, transport=httpx.MockTransport(upstream))  # type: ignore[arg-type]


class _Drop:
    def emit(self, event: object) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("k", type=int, help="requests to route after the warm-up")
    parser.add_argument("--bundle", default=".polyroute/bundle")
    parser.add_argument("--config", default="experiments/configs/router.example.yaml")
    parser.add_argument(
        "--sink", choices=("drop", "file"), default="drop", help="drop events, or write them"
    )
    args = parser.parse_args()
    body = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}]}
    with tempfile.TemporaryDirectory() as events:
        sink: _Drop | FileEventSink = _Drop()
        if args.sink == "file":  # closed (drained) before the run ends: every event counted
            sink = FileEventSink(events, fsync="never")
        with TestClient(routed_app(args.config, args.bundle, sink)) as client:
            for _ in range(20 + args.k):
                client.post("/v1/chat/completions", json=body)
        if isinstance(sink, FileEventSink):
            sink.close()


if __name__ == "__main__":
    main()
