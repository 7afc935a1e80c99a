"""Model control in split mode: the desired state, what workers report, and how reports combine.

One hash holds the desired state (``Keys.desired``): each model an operator loaded or unloaded,
with the generation of that change (one counter per deployment, so a later change always has a
higher one). Workers converge to it (``convergence.py``) and report their models' states in a
hash of their own (``Keys.model_states``), beside their heartbeat record rather than in it: the
heartbeat's wire format is read by every node of a rolling upgrade, and an older node drops a
record it cannot read. Both kinds of change are announced on one channel
(``Keys.model_changes``): ``d<generation>`` for the desired state, ``s`` for a worker's report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sluiceway.split.wire import WireError, pack, unpack

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"
"""A model's states, in the words of Triton's repository extension (``registry.ModelState``)."""

LOADED = "loaded"
UNLOADED = "unloaded"
"""What an operator asked a model to be."""

DESIRED_CHANGED = b"d"
STATES_CHANGED = b"s"
"""The first byte of a message on the model channel: which hash changed."""

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Desired:
    """What an operator last asked of a model, and the generation of that request."""

    state: str
    generation: int


def read_desired(values: dict[bytes, bytes]) -> dict[str, Desired]:
    """The desired-state hash as records; values of another format are skipped."""
    desired = {}
    for name, value in values.items():
        state, _, generation = value.decode().rpartition(":")
        if state in (LOADED, UNLOADED) and generation.isdigit():
            desired[name.decode()] = Desired(state, int(generation))
    return desired


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One model on one worker: its state, why it is not (or not newly) ready, the desired
    generation the worker last acted on for it (0: none), and the version it serves."""

    state: str
    reason: str = ""
    generation: int = 0
    version: str = ""


@dataclass(slots=True)
class ModelReport:
    """One worker's report: the highest desired generation it has read, and its models."""

    seen: int
    models: dict[str, ModelStatus] = field(default_factory=dict)

    def encode(self) -> bytes:
        models = {
            name: [status.state, status.reason, status.generation, status.version]
            for name, status in self.models.items()
        }
        return pack([_VERSION, self.seen, models])

    @staticmethod
    def decode(data: bytes) -> ModelReport | None:
        """Parse a report; ``None`` for one of another format (a newer or older worker).

        Fields beyond those known here, of the report or of a model's status, are a later
        release's: ignored, so adding one needs no upgrade order (as ``wire.py``'s records).
        """
        try:
            fields = unpack(data)
            version, seen, models = fields[:3]
            if version != _VERSION:
                return None
            return ModelReport(
                int(seen),
                {
                    str(name): ModelStatus(str(state), str(reason), int(generation), str(ver))
                    for name, (state, reason, generation, ver, *_) in models.items()
                },
            )
        except (WireError, TypeError, ValueError, AttributeError):
            return None


def combine(desired: Desired | None, statuses: Iterable[ModelStatus]) -> ModelStatus:
    """One model's state at an API node, from what the live workers report of it.

    - Unloaded by an operator: ``UNAVAILABLE`` ("unloaded") as soon as the node hears of it,
      whatever workers still say: the node stops admitting the model's jobs at once.
    - Else ``READY`` if any live worker has it ready (a worker whose load failed stops owning
      the model's partitions, so its jobs go to the ready ones); ``LOADING`` if none is ready
      and one is loading (or still unloading an earlier request); else ``UNAVAILABLE`` with
      every worker's reason, or "no live worker serves it".

    The version is the highest a ready worker serves; a ready model's reason says why a newer
    version did not load on some worker (the older one still serves there).
    """
    if desired is not None and desired.state == UNLOADED:
        return ModelStatus(UNAVAILABLE, "unloaded", desired.generation)
    statuses = list(statuses)
    ready = [status for status in statuses if status.state == READY]
    if ready:
        reasons = _reasons(ready)
        version = max((status.version for status in ready), key=_version_order)
        return ModelStatus(READY, reasons, max(s.generation for s in ready), version)
    if any(status.state in (LOADING, UNLOADING) for status in statuses):
        return ModelStatus(LOADING, "", max(s.generation for s in statuses))
    if statuses:
        return ModelStatus(UNAVAILABLE, _reasons(statuses), max(s.generation for s in statuses))
    return ModelStatus(UNAVAILABLE, "no live worker serves it")


def _reasons(statuses: list[ModelStatus]) -> str:
    return "; ".join(dict.fromkeys(status.reason for status in statuses if status.reason))


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
