"""Compressed rotation of the event files (``events.compress: zstd``): the same events come back,
a crash or a failed compression loses nothing, and the key is refused where it does nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_events_compact import _log, _write

from features.errors import ConfigError, DatasetError
from router.config import EventsConfig
from router.events import file_sink, join_events, read_events
from router.events.file_sink import event_files, read_event_bytes
from training.scale.compact import compact_events


def test_rotated_files_are_compressed_and_read_back_the_same(tmp_path: Path) -> None:
    emitted = _log(90)
    plain = _write(emitted, tmp_path / "plain", "compact", max_bytes=6_000)
    packed = _write(emitted, tmp_path / "packed", "compact", max_bytes=6_000, compress="zstd")
    files = event_files(packed)
    assert len(files) == len(event_files(plain)) > 3
    assert all(f.name.endswith(".jsonl.zst") for f in files)
    assert not list(packed.glob("*.jsonl")) and not list(packed.glob("*.tmp"))
    # byte for byte the plain files, smaller on disk
    for a, b in zip(event_files(plain), files, strict=True):
        assert read_event_bytes(b) == a.read_bytes()
    plain_size = sum(f.stat().st_size for f in event_files(plain))
    assert sum(f.stat().st_size for f in files) < plain_size / 2
    pd.testing.assert_frame_equal(
        join_events(read_events(packed), join_window_s=3600),
        join_events(read_events(plain), join_window_s=3600),
    )
    counts = compact_events(packed, tmp_path / "parquet")
    assert counts["decisions"] == 90


def test_a_crash_between_compressing_and_removing_reads_each_event_once(tmp_path: Path) -> None:
    directory = _write(_log(20), tmp_path / "log", "compact")
    (plain,) = event_files(directory)
    kept = plain.read_bytes()
    n_events = len(list(read_events(directory)))
    packed = file_sink.compress_file(plain)
    plain.write_bytes(kept)  # as if the process died before unlinking it
    assert event_files(directory) == [packed]
    assert len(list(read_events(directory))) == n_events > 20


def test_a_failed_compression_keeps_the_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(path: Path, level: int = 3, sync: bool = True) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(file_sink, "compress_file", broken)
    directory = _write(_log(20), tmp_path / "log", "compact", compress="zstd")
    (plain,) = event_files(directory)
    assert plain.suffix == ".jsonl"
    assert "could not compress" in caplog.text
    assert len(list(read_events(directory))) > 20


def test_compress_file_leaves_no_partial_file_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zstandard

    directory = _write(_log(5), tmp_path / "log", "compact")
    (plain,) = event_files(directory)

    class Failing:
        def __init__(self, level: int) -> None:
            pass

        def copy_stream(self, src: object, dst: object) -> None:
            raise zstandard.ZstdError("boom")

    monkeypatch.setattr(zstandard, "ZstdCompressor", Failing)
    with pytest.raises(zstandard.ZstdError):
        file_sink.compress_file(plain)
    assert sorted(p.name for p in directory.iterdir()) == [plain.name]


def test_a_corrupt_compressed_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "events-20261207T000000Z-000001.jsonl.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(DatasetError, match=r"events-20261207T000000Z-000001\.jsonl\.zst"):
        list(read_events(tmp_path))


def test_compress_is_refused_where_it_does_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"events\.compress"):
        EventsConfig.model_validate({"sink": "postgres", "compress": "zstd"})
    with pytest.raises(ValueError, match="compress"):
        EventsConfig.model_validate({"compress": "gzip"})
    with pytest.raises(ValueError, match="zstd_level"):
        EventsConfig.model_validate({"compress": "zstd", "zstd_level": 30})
    with pytest.raises(ConfigError, match="compress"):
        file_sink.FileEventSink(tmp_path, compress="lz4")  # type: ignore[arg-type]
    config = EventsConfig.model_validate({"compress": "zstd", "zstd_level": 9})
    assert (config.compress, config.zstd_level) == ("zstd", 9)


def test_the_gateway_sink_follows_the_config(tmp_path: Path) -> None:
    from router.app import build_sink
    from router.config import RouterConfig, load_config

    example = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"
    raw = load_config(example).model_dump()
    raw["events"] = {"directory": str(tmp_path), "compress": "zstd", "zstd_level": 5}
    config = RouterConfig.model_validate(raw)
    sink = build_sink(config)
    try:
        assert isinstance(sink, file_sink.FileEventSink)
        assert (sink.compress, sink.zstd_level) == ("zstd", 5)
    finally:
        sink.close()
