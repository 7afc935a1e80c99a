"""The two small interfaces a model kind implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sluiceway.models.costs import CallCost, LearnedCost


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the runtime schedules one model: compute slots, batch size, fill delay, queue bound.

    ``split`` lets the scheduler spread a key's waiting jobs over free slots when that finishes
    them sooner; ``fair_wait_calls`` bounds a key's wait for a slot, as a multiple of its own
    call's cost (0 = off); ``tenant_quota`` caps one tenant's jobs queued or running (0 = off).
    """

    slots: int
    max_batch: int
    max_delay_s: float = 0.0
    max_queue: int = 1024
    split: bool = True
    fair_wait_calls: float = 2.0
    tenant_quota: int = 0


class Model(ABC):
    """A loaded model. ``infer`` runs one batch; results come back in input order.

    An item's result may be an ``Exception`` instance: that item fails, the others succeed.
    """

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Approximate memory held, for the cache budget."""

    @abstractmethod
    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        """Run the model on a batch of model-ready inputs."""

    @property
    def runs_inline(self) -> bool:
        """Whether ``infer_inline`` may be called: the compute is one blocking call, which the
        runtime makes on the event loop's own thread when it is known to be very short."""
        return False

    def infer_inline(self, inputs: Sequence[Any]) -> list[Any]:
        """``infer`` as a blocking call on the caller's thread (only if ``runs_inline``)."""
        raise NotImplementedError(f"{type(self).__name__} does not run inline")

    @property
    def runs_wide(self) -> bool:
        """Whether ``infer_wide`` may be called: the same call as ``infer_inline``, computed
        on every core at once. Worth it only while no other model call computes, which the
        runtime knows and the model does not (``runtime/threads.py``): a lone request then
        gets the whole machine instead of one core, at some extra CPU per call."""
        return False

    def infer_wide(self, inputs: Sequence[Any]) -> list[Any]:
        """``infer_inline`` computed on every core (only if ``runs_wide``)."""
        raise NotImplementedError(f"{type(self).__name__} does not run wide")

    @property
    def computes_on_caller(self) -> bool:
        """Whether a call's compute runs on the calling thread alone (no pool of its own), so
        that thread's CPU time is the call's cost; the scheduler then judges batching by it
        (``Lane.batch_limit``)."""
        return False


class ThreadedModel(Model):
    """A model whose compute is a blocking call that releases the GIL (ONNX Runtime, LiteRT).

    ``predict_batch`` runs in a worker thread so the event loop stays free; a call the runtime
    knows to be shorter than a thread hop (a tiny model) it may make inline instead.
    """

    @abstractmethod
    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Blocking batch inference."""

    async def infer(self, inputs: Sequence[Any]) -> list[Any]:
        return await asyncio.to_thread(self.predict_batch, inputs)

    @property
    def runs_inline(self) -> bool:
        return True

    def infer_inline(self, inputs: Sequence[Any]) -> list[Any]:
        return self.predict_batch(inputs)


class ModelKind(ABC):
    """A family of models: its name, its batch policy and how to load one from a spec.

    ``spec`` is ``None`` for a model that is the same for every request; tenant models
    (the kiosk KNN) are built from data carried in the job.
    """

    name: str
    policy: BatchPolicy

    def call_cost(self) -> CallCost:
        """What one call of n items costs; by default learned online from measured calls."""
        return LearnedCost()

    def prepare(self) -> None:
        """Import what loading needs, before the first request (blocking; nothing by default).

        Called by a dispatcher that will run this kind (``LocalDispatcher.start``), so a
        process that only routes its jobs (a split-mode API node) never imports its library,
        and one that runs them does not import it on a request's time."""
        return None

    def load_peak_nbytes(self) -> int:
        """Memory one load may take at its peak, known before loading; 0 = unknown.

        The model cache makes that much room first, so loading a model does not take the
        process over its budget while the models it will evict are still held.
        """
        return 0

    @abstractmethod
    async def load(self, spec: Any) -> Model:
        """Load or fit one model. May be slow; the cache makes sure it runs once per key."""
