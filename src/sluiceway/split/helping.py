"""Second homes for hot partitions: which saturated partitions of others a worker reads too.

Each partition has one owner (``membership.py``), so a restaurant's jobs meet in one batcher
and its model is fitted once. When several busy restaurants hash to one worker, that owner's
slots stay saturated while others idle. An owner takes at most ``worker_prefetch`` jobs ahead
of its slots; the rest waits in the stream, and each heartbeat the owner reports, per owned
partition, how many of its jobs it could not take (its *backlog*: waiting, or held by a
helper; once helped, what its helpers hold, so they stay while their help is why it keeps
up). Another worker then joins such a partition as a second consumer of the same consumer
group, reading only what waits there (no blocking read: it never takes jobs the owner is
free to take), and leaves once the owner has stopped reporting it.

Help goes only where it adds slots, since every extra restaurant on a worker splits its
batches (each call holds one restaurant's queries) and costs a fit. A worker joins only if
it has room: its own partitions have had no backlog for ``worker_help_after_s`` (not just a
pause between two bursts) and its read-ahead was not full since its last beat. A helper
reads its own partitions before the helped ones, and reports no backlog of its own while it
helps (its own wait comes from the room it gives others): helpers never call helpers onto
their own partitions, which once spread every restaurant over every worker.

A second home costs a fit of the partition's models (the kiosk's KNN: 2 s of a slot). The
join waits until the backlog has lasted ``worker_help_after_s`` (about that cost): the
ski-rental rule, 2-competitive, so a brief burst never pays for fits while a lasting backlog
pays for one fit in at most the time it lasted. Leaving waits as long, so the help does not
flap with the backlog's sampling, and a stream left lately is joined again at once.

Nothing is lost or run twice: a consumer group delivers each entry to one consumer; the
helper answers and acknowledges what it read like any job, keeps running what it holds
after leaving, and the owner claims it (``claims.py``) if the helper dies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sluiceway.split.keys import digest
from sluiceway.split.wire import WireError, WorkerRecord, pack, unpack

_STILL_FITTED_S = 60.0
"""A stream left this recently is joined again without waiting: its models are likely still in
this worker's cache, so joining costs no fit (a help that ebbs and flows with the load would
otherwise wait a fit's time at every return)."""

Backlog = dict[str, int]
"""Partition stream → jobs of it its owner could not take."""


def encode_backlog(backlog: Backlog) -> bytes:
    """Bytes of a worker's entry in the backlog hash."""
    return pack(backlog)


def decode_backlog(data: bytes) -> Backlog:
    """A worker's backlog entry; empty when it is not one (another wire version)."""
    try:
        value: Any = unpack(data)
    except WireError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and v > 0}


class Helping:
    """The partitions of other workers one worker reads as a second consumer."""

    def __init__(self, worker: str, help_after_s: float) -> None:
        self._worker = worker
        self._after_s = help_after_s
        self._hot_since: dict[str, float] = {}  # stream reported → since when, continuously
        self._last_hot: dict[str, float] = {}  # stream helped → when last reported
        self._left: dict[str, float] = {}  # stream helped before → when we left it
        self._backlogged: dict[str, float] = {}  # worker → when it last reported a backlog
        self.helped: list[str] = []
        """The streams read as a helper now (replaced, never changed in place)."""

    def plan(
        self,
        now: float,
        live: Mapping[str, WorkerRecord],
        backlogs: Mapping[str, Backlog],
        own_backlog: Backlog,
        model_of: Mapping[str, str],
        owned: Collection[str],
        full: bool = False,
    ) -> list[str]:
        """Update ``helped`` from this heartbeat's reports; return the streams just joined.

        ``backlogs`` are the reports in the registry (by worker), ``own_backlog`` this
        worker's own, ``model_of`` the streams this worker can serve, ``owned`` those it owns;
        ``full``: this worker's read-ahead was full since its last beat, so it has no room to
        take on another partition (it keeps those it helps).
        """
        if self._after_s <= 0:
            self.helped = []
            return []
        saturated = {w for w, b in backlogs.items() if w in live and b} - {self._worker}
        if own_backlog:
            saturated.add(self._worker)
        # A worker whose own partitions had a backlog lately has no slots to spare: its read
        # of them just paused between two bursts (or its help filled them). Joining would
        # fit another restaurant on slots its own need, split batches that were full, and
        # draw helpers onto its own partitions in turn, until every worker fits every model.
        for reporter in saturated:
            self._backlogged[reporter] = now
        self._backlogged = {
            w: t
            for w, t in self._backlogged.items()
            if now - t < self._after_s and (w in live or w == self._worker)
        }
        hot: dict[str, tuple[str, int]] = {}
        for reporter in saturated - {self._worker}:
            for stream, waiting in backlogs[reporter].items():
                if stream in model_of and stream not in owned:
                    hot[stream] = (reporter, waiting)
        self._hot_since = {stream: self._hot_since.get(stream, now) for stream in hot}
        for stream in hot:
            self._last_hot[stream] = now
        # A stream helped lately has its models still fitted here: the fit is paid, join now.
        self._left = {s: t for s, t in self._left.items() if now - t < _STILL_FITTED_S}
        ripe = {
            s: hot[s]
            for s, since in self._hot_since.items()
            if now - since >= self._after_s or s in self._left
        }
        free = sorted(w for w in live if w not in self._backlogged)
        if self._worker not in live and self._worker not in self._backlogged:
            free.append(self._worker)
        assigned = _assign(ripe, free, live, model_of)
        # A worker with a backlog of its own joins nobody, but keeps what it helps (it reads
        # its own partitions first): dropping and rejoining with each beat would flap.
        keep = [
            stream
            for stream in self.helped
            if stream not in owned and now - self._last_hot.get(stream, 0.0) < self._after_s
        ]
        joined = [s for s, ws in assigned.items() if self._worker in ws and s not in keep]
        joined = [] if full else joined
        if joined or len(keep) != len(self.helped):
            self._left.update((s, now) for s in self.helped if s not in keep)
            self.helped = keep + joined
        self._last_hot = {s: t for s, t in self._last_hot.items() if s in self.helped or s in hot}
        return joined


def _assign(
    hot: Mapping[str, tuple[str, int]],
    free: list[str],
    live: Mapping[str, WorkerRecord],
    model_of: Mapping[str, str],
) -> dict[str, set[str]]:
    """Helpers for the hot streams: each gets one (the biggest backlogs first, spread over the
    free workers), then each free worker still idle joins the stream with the most backlog
    per helper.

    Every worker computes the same answer from the same registry, like ownership: ties are
    broken by rendezvous hashing.
    """

    def serves(worker: str, stream: str) -> bool:
        record = live.get(worker)
        return worker != hot[stream][0] and (record is None or model_of[stream] in record.models)

    load = dict.fromkeys(free, 0)
    helpers: dict[str, set[str]] = {stream: set() for stream in hot}
    for stream in sorted(hot, key=lambda s: (-hot[s][1], s)):
        candidates = [w for w in free if serves(w, stream)]
        if candidates:
            chosen = min(candidates, key=lambda w: (load[w], -digest(f"{stream}:{w}")))
            helpers[stream].add(chosen)
            load[chosen] += 1
    for worker in free:
        options = [s for s in hot if serves(worker, s)]
        if load[worker] == 0 and options:
            chosen = max(options, key=lambda s: (hot[s][1] / (len(helpers[s]) + 1), s))
            helpers[chosen].add(worker)
            load[worker] += 1
    return helpers
