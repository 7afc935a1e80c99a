"""Every Redis key split mode uses, built in one place.

One prefix namespaces a deployment, so several can share a Redis (and tests never collide).
Jobs of a model are spread over a fixed number of partition streams by their batching key:
the same restaurant always lands in the same partition, hence on the same worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

GROUP = "workers"
"""The consumer group every worker of a model reads its partitions with."""


def digest(text: str) -> int:
    """A stable 64-bit hash of ``text`` (the same in every process, unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names of one deployment (``prefix``) with ``partitions`` streams per model."""

    prefix: str = "sluiceway"
    partitions: int = 16

    def jobs(self, model: str, partition: int) -> str:
        """The stream of one partition of a model's jobs."""
        return f"{self.prefix}:jobs:{model}:{partition}"

    def all_jobs(self, model: str) -> list[str]:
        """Every partition stream of a model, in partition order."""
        return [self.jobs(model, p) for p in range(self.partitions)]

    def partition(self, key: str) -> int:
        """The partition of a batching key: stable across processes and machines."""
        return digest(key) % self.partitions

    def queued(self, model: str) -> str:
        """Counter of a model's jobs admitted and not yet finished (the queue bound)."""
        return f"{self.prefix}:queued:{model}"

    def reply(self, node: str) -> str:
        """The stream an API node reads its results from."""
        return f"{self.prefix}:reply:{node}"

    @property
    def cancels(self) -> str:
        """The Pub/Sub channel on which API nodes name the jobs whose requesters left."""
        return f"{self.prefix}:cancel"

    def dead_letters(self, model: str) -> str:
        """Jobs that crashed workers too often or failed in the model, with their error."""
        return f"{self.prefix}:dead:{model}"

    @property
    def workers(self) -> str:
        """Hash of live workers: worker id → its heartbeat record."""
        return f"{self.prefix}:workers"

    @property
    def calls(self) -> str:
        """Hash of the model calls each worker made: worker id → its ``wire.CallsRecord``."""
        return f"{self.prefix}:calls"

    @property
    def desired(self) -> str:
        """Hash of the models operators loaded or unloaded: name → ``"<state>:<generation>"``."""
        return f"{self.prefix}:models:desired"

    @property
    def generation(self) -> str:
        """Counter of changes to the desired state: every load or unload takes the next one."""
        return f"{self.prefix}:models:generation"

    @property
    def model_states(self) -> str:
        """Hash of what each worker reports of its models: worker id → its model report."""
        return f"{self.prefix}:models:states"

    @property
    def model_changes(self) -> str:
        """The Pub/Sub channel saying the desired state or a worker's report changed."""
        return f"{self.prefix}:models"

    @property
    def backlogs(self) -> str:
        """Hash of saturated workers: worker id → the backlog of each partition it owns."""
        return f"{self.prefix}:backlog"


def owner(model: str, partition: int, workers: list[str]) -> str | None:
    """The worker that owns a partition: rendezvous hashing over the live workers.

    Every process computes the same answer from the same live set, and when a worker comes
    or goes only the partitions it wins or held move.
    """
    if not workers:
        return None
    return max(workers, key=lambda worker: digest(f"{model}:{partition}:{worker}"))
