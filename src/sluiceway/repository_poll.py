"""Polling the model repository: Triton's ``--model-control-mode=poll``.

Every ``SLUICEWAY_REPOSITORY_POLL_S`` the repository's folders are looked at (names, sizes,
modification times and inodes of every file in each model's folder, following symbolic links,
never reading contents: 5,000 files took about 0.1 s of a thread per poll). A model whose
folder appeared or changed is loaded (reloaded: the running version serves until the new one
is ready, and keeps serving if it fails), and one whose folder is gone is unloaded and no longer
listed.

A change is acted on only once the folder has looked the same at two polls in a row, so a
model still being copied in is not loaded half-written (Triton's poll mode loads what it sees,
and its documentation warns of exactly that); a copy that pauses for longer than an interval
can still be seen half-way. The load it makes reads the folder afresh, never taking the answer
of a load already running, which may have read it before the change. What failed to load is
not tried again until its folder changes: a broken model costs one attempt, not one per poll.
A repository that cannot be listed, or that lost every folder at once (the empty mount point of
a volume not mounted), unloads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from sluiceway.errors import SluicewayError
from sluiceway.registry import ModelRegistry
from sluiceway.repository import is_model_name

logger = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]
"""Every file under a model's folder: its path inside the folder, size, modification time and
inode (a file renamed over another of the same size and time is a change too)."""


def fingerprints(repository: Path, skip: frozenset[str] = frozenset()) -> dict[str, Fingerprint]:
    """Each model folder of ``repository`` (a name a model may have, not in ``skip``) and its
    fingerprint; ``RepositoryUnreadable`` when the repository itself cannot be listed (a volume
    not mounted yet is no reason to unload every model)."""
    try:
        with os.scandir(repository) as listed:
            folders = [entry for entry in listed if _is_folder(entry)]
    except OSError as error:
        raise RepositoryUnreadable(f"{repository}: {error}") from error
    return {
        folder.name: _fingerprint(folder.path)
        for folder in sorted(folders, key=lambda entry: entry.name)
        if is_model_name(folder.name) and folder.name not in skip
    }


class RepositoryUnreadable(Exception):
    """The repository folder could not be listed (nothing is changed because of it)."""


def _fingerprint(folder: str) -> Fingerprint:
    """Every file under ``folder``, through symbolic links (a version folder may be one); a
    folder reached twice (a link loop) is walked once."""
    files: list[tuple[str, int, int, int]] = []
    visited: set[tuple[int, int]] = set()
    pending = [(folder, "")]
    while pending:
        path, prefix = pending.pop()
        try:
            stat = os.stat(path)
            if (stat.st_dev, stat.st_ino) in visited:
                continue
            visited.add((stat.st_dev, stat.st_ino))
            with os.scandir(path) as listed:
                entries = list(listed)
        except OSError:  # gone or unreadable meanwhile: the next poll sees it settled
            continue
        for entry in entries:
            inside = prefix + entry.name
            try:
                if entry.is_dir():
                    pending.append((entry.path, inside + "/"))
                    continue
                stat = entry.stat()
            except OSError:  # removed while walked, or a dangling link
                continue
            files.append((inside, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(sorted(files))


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


class RepositoryPoller:
    """Loads, reloads and unloads repository models as their folders change."""

    def __init__(self, registry: ModelRegistry, repository: Path, interval_s: float) -> None:
        self._registry = registry
        self._repository = repository
        self._interval_s = interval_s
        self._skip = registry.builtin_names
        self._unreadable = False  # said once when it becomes so, once when it is readable again
        self._emptied = False  # said once when every folder went at once
        self._acted: dict[str, Fingerprint] = {}
        """Each folder as it was when last loaded (or found at start-up)."""
        self._seen: dict[str, Fingerprint] = {}
        """Each folder as the last poll saw it."""
        self._task: asyncio.Task[None] | None = None

    async def baseline(self) -> None:
        """Take the folders as they are now, before the start-up loads: a change made while
        those run is then seen by the first poll."""
        found = await self._look()
        if found is not None:
            self._seen = found
            self._acted = dict(found)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="repository poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll()
            except Exception:  # a bug here must not end polling for the process's life
                # (Said once per ``logs.REPEAT_WINDOW_S`` if it repeats: ``logs.RepeatFilter``.)
                logger.exception("polling the model repository failed")

    async def poll(self) -> None:
        """Look at the repository once, and act on each folder that settled on a change."""
        now = await self._look()
        if now is None:
            return
        if not now and self._acted:
            # Every folder gone at once is what a volume not mounted (yet, or any more) looks
            # like: its mount point is an empty folder. Unloading every model for that is
            # worse than keeping them; the models go one by one, or by hand.
            if not self._emptied:
                logger.warning(
                    "the model repository is empty: taken for a volume not mounted, nothing "
                    "is unloaded (unload by hand what should go)"
                )
            self._emptied = True
            return
        self._emptied = False
        for name in sorted(now.keys() | self._acted.keys()):
            current = now.get(name)
            if current == self._acted.get(name) or current != self._seen.get(name):
                continue  # unchanged, or still changing: looked at again next poll
            if current is None:
                del self._acted[name]
                await self._removed(name)
            else:
                self._acted[name] = current
                await self._changed(name)
        self._seen = now

    async def _look(self) -> dict[str, Fingerprint] | None:
        """The repository's folders now; ``None`` (and nothing changed) if it cannot be listed."""
        try:
            found = await asyncio.to_thread(fingerprints, self._repository, self._skip)
        except RepositoryUnreadable as error:
            if not self._unreadable:
                logger.warning("the model repository cannot be read, nothing changes: %s", error)
            self._unreadable = True
            return None
        if self._unreadable:
            logger.warning("the model repository can be read again")
        self._unreadable = False
        return found

    async def _changed(self, name: str) -> None:
        logger.info("model %s: its folder changed, loading it", name)
        try:
            entry = await self._registry.load(name, fresh=True)
        except SluicewayError as error:  # a version already serving keeps serving
            logger.warning("model %s did not load after its folder changed: %s", name, error)
            return
        if entry.reason:
            logger.warning("model %s did not load after its folder changed: %s", name, entry.reason)

    async def _removed(self, name: str) -> None:
        logger.info("model %s: its folder is gone, unloading it", name)
        try:
            await self._registry.forget(name)
        except SluicewayError as error:
            logger.warning("model %s could not be unloaded after its folder went: %s", name, error)
