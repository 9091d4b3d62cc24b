"""The file sink's line formats: format 2 (compact decisions, written) and format 1 (one full
record a line, still read).

Format 1 (files written before 2026-12-07, and ``FileEventSink(format="json")``): every line is
a full record, ``{"kind": "decision" | "outcome" | "feedback", ...}``
(:func:`router.events.models.event_to_record`); a decision of the bundled 29-model policy takes
about 6.6 KB, most of it the same model names, action features and versions on every line and
the float64 text of the features.

Format 2: outcome and feedback lines are those of format 1 without the fields that hold their
default (``"error_class":null``, ``"attempts":null``, ...: they read back the same). What
decisions repeat (tenant,
profile, policy, feature and reward-spec versions, reward spec, the eligible models and their
action features) is written once per file, in a **frame** line, before the first decision that
uses it; a decision line names its frame and carries only its own values::

    {"kind":"frame","frame":0,"tenant":"acme","profile":"default","policy_version":"...",
     "feature_version":"...","reward_spec":{...},"reward_spec_version":"1",
     "eligible_models":["a","b",...],"action_features":[[...],...]}
    {"kind":"decision","event_id":"...","timestamp":1796652649.3034282,"frame":0,
     "chosen_index":1,"chosen_probability":0.4081632653061224,
     "pmf_f32":"<base64>","context_f32":"<base64>"}

- ``pmf_f32`` / ``context_f32``: the probabilities and the context features as little-endian
  float32, base64: a reader gets back the float32 rounding of the logged values (relative
  error below 6e-8; values under float32's smallest normal, 1.2e-38, within that of 0).
  ``chosen_probability`` (what importance weights divide by), the timestamp and the frame's
  action features keep their exact float64 text.
- ``override_reason`` and ``prompt`` appear only when set; ``chosen_model`` is
  ``eligible_models[chosen_index]`` and ``learnable`` is ``override_reason is None``.
- Frame numbers start at 0 in each file, so each file reads alone (rotation starts new
  frames). A frame line comes before its decisions in the same write, so a torn last line
  never leaves a decision without its frame.
- A decision whose values do not fit float32 (non-zero numbers beyond its range) is written
  as a full format-1 line: a format-2 file may mix both, and readers accept both.

:class:`RecordReader` turns either form back into the full records of format 1, which
:func:`router.events.models.event_from_record` validates as before.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from features.errors import DatasetError, MissingFrameError
from router.events.models import DecisionEvent, DecisionRecord, Emitted, event_to_json

FRAME_KIND = "frame"
MAX_FRAMES = 4096  # per file: a sink rotates rather than keep more in memory
_FRAME_FIELDS = (
    "tenant",
    "profile",
    "policy_version",
    "feature_version",
    "reward_spec",
    "reward_spec_version",
    "eligible_models",
    "action_features",
)
_F32 = np.dtype("<f4")
_F32_MAX = float(np.finfo(np.float32).max)
_FrameKey = tuple[Any, ...]


def _f32(values: np.ndarray) -> str | None:
    """``values`` as base64 little-endian float32; None when one is beyond float32's range."""
    if values.size and (values.max() > _F32_MAX or values.min() < -_F32_MAX):
        return None
    return base64.b64encode(values.astype(_F32).tobytes()).decode("ascii")


# one encoder for every line (``json.dumps`` with options builds a new one per call); strings
# through it are JSON-escaped, floats are spelled by ``repr`` as ``json`` spells them
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class CompactEncoder:
    """Format-2 lines of one file: remembers the frames that file already holds.

    Call :meth:`reset` when a new file starts; :attr:`full` says a sink should start one.
    """

    def __init__(self, max_frames: int = MAX_FRAMES) -> None:
        self.max_frames = max_frames
        self._frames: dict[_FrameKey, int] = {}

    def reset(self) -> None:
        self._frames.clear()

    @property
    def full(self) -> bool:
        return len(self._frames) >= self.max_frames

    def encode(self, event: Emitted) -> bytes:
        """The line(s) of ``event``, each ending in ``\\n``: a frame line first when the
        decision's frame is new to this file."""
        if isinstance(event, DecisionRecord):
            return self._decision(event, event.action_features, event.probabilities,
                                  event.context_features)  # fmt: skip
        if isinstance(event, DecisionEvent):
            return self._decision(
                event,
                np.asarray(event.action_features, dtype=float),
                np.asarray(event.probabilities, dtype=float),
                np.asarray(event.context_features, dtype=float),
            )
        return event_to_json(event, exclude_defaults=True) + b"\n"

    def _decision(
        self,
        event: DecisionRecord | DecisionEvent,
        actions: np.ndarray,
        pmf: np.ndarray,
        context: np.ndarray,
    ) -> bytes:
        pmf_text, context_text = _f32(pmf), _f32(context)
        if pmf_text is None or context_text is None:  # not representable: format 1
            full = event if isinstance(event, DecisionEvent) else event.to_event()
            return event_to_json(full) + b"\n"
        key = (
            event.tenant,
            event.profile,
            event.policy_version,
            event.feature_version,
            event.reward_spec,
            event.reward_spec_version,
            tuple(event.eligible_models),
            actions.shape,
            actions.tobytes(),
        )
        out = b""
        number = self._frames.get(key)
        if number is None:
            number = self._frames[key] = len(self._frames)
            frame = {
                "kind": FRAME_KIND,
                "frame": number,
                "tenant": event.tenant,
                "profile": event.profile,
                "policy_version": event.policy_version,
                "feature_version": event.feature_version,
                "reward_spec": event.reward_spec.model_dump(mode="json"),
                "reward_spec_version": event.reward_spec_version,
                "eligible_models": list(event.eligible_models),
                "action_features": actions.tolist(),
            }
            out = _dumps(frame)
        text = (
            f'{{"kind":"decision","event_id":{_ENCODE(event.event_id)},'
            f'"timestamp":{float(event.timestamp)!r},"frame":{number},'
            f'"chosen_index":{int(event.chosen_index)},'
            f'"chosen_probability":{float(event.chosen_probability)!r},'
            f'"pmf_f32":"{pmf_text}","context_f32":"{context_text}"'
        )
        if event.override_reason is not None:
            text += f',"override_reason":{_ENCODE(event.override_reason)}'
        if event.prompt is not None:
            text += f',"prompt":{_ENCODE(event.prompt)}'
        return out + text.encode() + b"}\n"


def _dumps(record: dict[str, Any]) -> bytes:
    return _ENCODE(record).encode() + b"\n"


def format1_line(event: Emitted) -> bytes:
    """A full format-1 line of ``event`` (``FileEventSink(format="json")``)."""
    if isinstance(event, DecisionRecord):
        return event_to_json(event.to_event()) + b"\n"
    return event_to_json(event) + b"\n"


def _floats(text: Any, field: str) -> list[float]:
    if not isinstance(text, str):
        raise DatasetError(f"{field}: expected base64 float32 text")
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise DatasetError(f"{field}: {len(raw)} bytes is not a whole number of float32 values")
    values: list[float] = np.frombuffer(raw, dtype=_F32).astype(float).tolist()
    return values


class RecordReader:
    """Full records from the records of one file, in order (one reader per file).

    :meth:`expand` returns a format-1 record unchanged, consumes a frame (returns None), and
    rebuilds a compact decision's full record from its frame.

    Raises
    ------
    DatasetError
        A frame or compact decision that is malformed (the caller decides whether a torn last
        line explains it; bad base64 raises :class:`binascii.Error`, also a ValueError).
    MissingFrameError
        A decision naming a frame not defined before it in the file (corruption, never a torn
        write; a DatasetError too, so catch it first).
    """

    def __init__(self) -> None:
        self._frames: dict[int, dict[str, Any]] = {}

    def expand(self, record: dict[str, Any]) -> dict[str, Any] | None:
        kind = record.get("kind")
        if kind == FRAME_KIND:
            number = record.get("frame")
            missing = [name for name in _FRAME_FIELDS if name not in record]
            if not isinstance(number, int) or missing:
                raise DatasetError(f"frame: needs an integer 'frame' and {list(_FRAME_FIELDS)}")
            self._frames[number] = {name: record[name] for name in _FRAME_FIELDS}
            return None
        if kind != "decision" or "frame" not in record:
            return record
        frame = self._frames.get(record["frame"])
        if frame is None:
            raise MissingFrameError(
                f"frame: decision {record.get('event_id')!r} names frame {record['frame']!r}, "
                "which no earlier line of its file defines"
            )
        index = record.get("chosen_index")
        models = frame["eligible_models"]
        chosen = models[index] if isinstance(index, int) and 0 <= index < len(models) else None
        return {
            "kind": "decision",
            "event_id": record.get("event_id"),
            "timestamp": record.get("timestamp"),
            **{name: frame[name] for name in _FRAME_FIELDS[:6]},
            "eligible_models": models,
            "action_features": frame["action_features"],
            "probabilities": _floats(record.get("pmf_f32"), "pmf_f32"),
            "chosen_model": chosen,
            "chosen_index": index,
            "chosen_probability": record.get("chosen_probability"),
            "override_reason": record.get("override_reason"),
            "context_features": _floats(record.get("context_f32"), "context_f32"),
            "prompt": record.get("prompt"),
        }
