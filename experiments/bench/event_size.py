"""Bytes per logged event on the bundled default: routes the first ``N`` test prompts of the
bundled MMLU-Pro sample in-process through the app (Starlette's test client, a mock upstream
transport, the file sink as configured by default) and measures the event files it wrote.

Run it from the checkout to measure (it imports that checkout's code)::

    .venv/bin/python experiments/bench/event_size.py 2000 --bundle .polyroute/bundle

Prints one JSON object: events and bytes per kind, bytes per decision (frame lines counted
with the decisions they serve), per event, and the same after gzip and zstd -3 of the files when
those are at hand (zstd only if the ``zstandard`` package is installed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the checkout being measured, not an installed copy

import pandas as pd
from fastapi.testclient import TestClient
from request_instructions import routed_app  # this directory: same mock upstream and config

from router.events.file_sink import FileEventSink, event_files, read_event_bytes, read_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="requests to route")
    parser.add_argument("--bundle", default=".polyroute/bundle")
    parser.add_argument("--config", default="experiments/configs/router.example.yaml")
    parser.add_argument(
        "--compress", choices=("none", "zstd"), default="none", help="the sink's compression"
    )
    args = parser.parse_args()
    prompts = pd.read_parquet(Path("training/data/mmlu_pro_sample/prompts.parquet"))
    texts = prompts.loc[prompts["split"] == "test", "prompt"].tolist()

    with tempfile.TemporaryDirectory() as directory:
        sink = FileEventSink(directory, fsync="never", compress=args.compress)
        with TestClient(routed_app(args.config, args.bundle, sink)) as client:
            for i in range(args.n):
                text = texts[i % len(texts)]
                body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
                assert client.post("/v1/chat/completions", json=body).status_code == 200
        sink.close()
        lines: dict[str, list[int]] = {}
        blob = b""
        disk = 0
        for path in event_files(directory):
            disk += path.stat().st_size
            data = read_event_bytes(path)
            blob += data
            for line in data.splitlines(keepends=True):
                kind = json.loads(line)["kind"]
                lines.setdefault(kind, []).append(len(line))
        n_events = sum(1 for _ in read_events(directory))
    total = len(blob)
    decisions = len(lines["decision"])
    decision_bytes = sum(lines["decision"]) + sum(lines.get("frame", []))
    out = {
        "requests": args.n,
        "events": n_events,
        "lines": {kind: len(sizes) for kind, sizes in lines.items()},
        "bytes": {kind: sum(sizes) for kind, sizes in lines.items()},
        "bytes_per_decision": round(decision_bytes / decisions, 1),
        "bytes_per_outcome": round(sum(lines["outcome"]) / len(lines["outcome"]), 1),
        "bytes_per_event": round(total / n_events, 1),
        "compress": args.compress,
        "on_disk_bytes_per_event": round(disk / n_events, 1),
        "gzip6_bytes_per_event": round(len(gzip.compress(blob, 6)) / n_events, 1),
    }
    try:
        import zstandard
    except ImportError:
        pass
    else:
        zstd = zstandard.ZstdCompressor(level=3).compress(blob)
        out["zstd3_bytes_per_event"] = round(len(zstd) / n_events, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
