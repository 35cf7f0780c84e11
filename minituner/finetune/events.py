"""The typed events of a fine-tuning run, and their JSON form.

One vocabulary for everything that watches a run: the CLI's progress bar, the app's live
charts and the pipe from a training child process (``minituner.finetune.worker``) all read these::

    Started      the model is ready: device, trainable and total parameter counts
    Phase        what the run is doing now (preparing, training, final evaluation, saving)
    Step         one optimizer step: loss, learning rate, tokens/s
    Evaluation   the periodic evaluation on a sample of each held-out split, with
                 accuracy by verb (``verb_accuracy``: the irregular verbs, a taught one)
    Finished | Stopped | Diverged | Failed     exactly one, last

``to_json`` / ``event_from_json`` round-trip every event through a plain JSON object with
a ``"event"`` tag; an unknown tag or a malformed field raises ValueError, so a reader never
acts on half-understood input; an evaluation is held to the ranges of its stored form
(:class:`minituner.store.records.EvalPoint`). Consumers dispatch with ``isinstance`` or ``match``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import ClassVar

from minituner.store.records import EvalPoint


@dataclass(frozen=True)
class Started:
    """The model is prepared and training begins."""

    tag: ClassVar[str] = "started"
    label: str
    device: str
    trainable_params: int
    total_params: int
    steps: int


@dataclass(frozen=True)
class Phase:
    """What the run is busy with (shown beside the progress bar)."""

    tag: ClassVar[str] = "phase"
    name: str  # preparing | training | final evaluation | saving
    detail: str = ""


@dataclass(frozen=True)
class Step:
    """One optimizer step (``step`` counts from 1)."""

    tag: ClassVar[str] = "step"
    step: int
    steps: int
    loss: float
    lr: float
    tokens_per_s: float


@dataclass(frozen=True)
class Evaluation(EvalPoint):
    """The periodic evaluation on ``eval_sample`` items of each split; drift is relative
    to the base model on the same sample (step 0 is the base model itself). The same
    fields as the stored record (:class:`minituner.store.records.EvalPoint`)."""

    tag: ClassVar[str] = "evaluation"

    @classmethod
    def from_metrics(cls, step: int, m: dict, drift: dict) -> Evaluation:
        """From ``evaluate()``'s figures and ``evaluate.drift()``'s."""
        return cls(
            step=step,
            irregular_accuracy=m["irregular_accuracy"],
            irregular_accuracy_per_verb=dict(m.get("irregular_accuracy_per_verb", {})),
            taught_accuracy=dict(m.get("taught_accuracy", {})),
            overregularized_rate=m["overregularized_rate"],
            regular_accuracy=m["regular_accuracy"],
            control_en_ppl=m["control_en_ppl"],
            control_es_ppl=m["control_es_ppl"],
            control_en_drift=drift["control_en_drift"],
            control_es_drift=drift["control_es_drift"],
        )


@dataclass(frozen=True)
class Finished:
    """The run completed; ``run_id`` is set once it is in the run store."""

    tag: ClassVar[str] = "finished"
    wall_time_s: float
    irregular_accuracy: float
    control_en_drift: float
    run_id: str = ""


@dataclass(frozen=True)
class Stopped:
    """Stopped on request between two steps; nothing is stored."""

    tag: ClassVar[str] = "stopped"
    message: str
    step: int


@dataclass(frozen=True)
class Diverged:
    """The loss or the evaluation blew up; nothing is stored."""

    tag: ClassVar[str] = "diverged"
    message: str
    step: int


@dataclass(frozen=True)
class Failed:
    """An error ended the run (one line, for the app and the CLI)."""

    tag: ClassVar[str] = "failed"
    message: str


Event = Started | Phase | Step | Evaluation | Finished | Stopped | Diverged | Failed
Terminal = Finished | Stopped | Diverged | Failed
TERMINAL = (Finished, Stopped, Diverged, Failed)
# the status a terminal event gives a run (metrics.json's "status", the app's live state)
STATUS = {Finished: "completed", Stopped: "stopped", Diverged: "diverged", Failed: "error"}
EVENT_TYPES: dict[str, type] = {
    t.tag: t for t in (Started, Phase, Step, Evaluation, Finished, Stopped, Diverged, Failed)
}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def to_json(ev: Event) -> dict:
    """The JSON object of an event: its fields plus ``"event": <tag>``."""
    return {"event": ev.tag, **dataclasses.asdict(ev)}


def event_from_json(obj: object) -> Event:
    """The event a JSON object describes.

    Raises:
        ValueError: not an object, an unknown ``event`` tag, missing or unknown fields,
            or a field of the wrong type (numbers must be finite; loss may be NaN only
            in a Diverged message, never in a Step).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"an event must be a JSON object, got {type(obj).__name__}")
    tag = obj.get("event")
    cls = EVENT_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(f"unknown event {tag!r}; known: {', '.join(EVENT_TYPES)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {k: v for k, v in obj.items() if k != "event"}
    unknown = set(given) - set(fields)
    if unknown:
        raise ValueError(f"{tag} event: unknown fields {sorted(unknown)}")
    for name, f in fields.items():
        has_default = f.default is not dataclasses.MISSING
        has_default = has_default or f.default_factory is not dataclasses.MISSING
        if name not in given:
            if has_default:
                continue
            raise ValueError(f"{tag} event: missing field {name!r}")
        v = given[name]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": _finite(v),
            "str": isinstance(v, str),
        }.get(kind)
        if ok is None:  # dict[str, float]
            ok = isinstance(v, dict) and all(
                isinstance(k, str) and _finite(x) for k, x in v.items()
            )
        if not ok:
            raise ValueError(f"{tag} event: field {name!r} has a bad value {v!r}")
        if kind == "float":
            given[name] = float(v)
    if cls is Evaluation:  # the ranges a stored evaluation keeps: accuracies in [0, 1] ...
        EvalPoint.from_json(given, f"{tag} event")
    return cls(**given)


def dumps(ev: Event) -> str:
    """One line of JSON (the child-process protocol writes one event per line)."""
    return json.dumps(to_json(ev), separators=(",", ":"), allow_nan=False)


def loads(line: str) -> Event:
    """The event on one line of JSON.

    Raises:
        ValueError: invalid JSON or an invalid event.
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON event line ({e}): {line[:80]!r}") from None
    return event_from_json(obj)
