"""Polling the model repository: Triton's ``--model-control-mode=poll``.

Every ``SLUICEWAY_REPOSITORY_POLL_S`` the repository's folders are looked at (names, sizes and
modification times of every file in each model's folder, never their contents). A model whose
folder appeared or changed is loaded (reloaded: the running version serves until the new one
is ready, and keeps serving if it fails), and one whose folder is gone is unloaded and no longer
listed.

A change is acted on only once the folder has looked the same at two polls in a row, so a
model still being copied in is not loaded half-written (Triton's poll mode loads what it sees,
and its documentation warns of exactly that). What failed to load is not tried again until its
folder changes: a broken model costs one attempt, not one per poll.
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

Fingerprint = tuple[tuple[str, int, int], ...]
"""Every file under a model's folder: its path inside the folder, size and modification time."""


def fingerprints(repository: Path) -> dict[str, Fingerprint]:
    """Each model folder of ``repository`` (a name a model may have) and its fingerprint; none
    when the repository itself cannot be read (a volume not mounted yet is no reason to unload
    every model)."""
    try:
        folders = [entry for entry in os.scandir(repository) if entry.is_dir()]
    except OSError as error:
        raise RepositoryUnreadable(f"{repository}: {error}") from error
    return {
        folder.name: _fingerprint(Path(folder.path))
        for folder in sorted(folders, key=lambda entry: entry.name)
        if is_model_name(folder.name)
    }


class RepositoryUnreadable(Exception):
    """The repository folder could not be listed (nothing is changed because of it)."""


def _fingerprint(folder: Path) -> Fingerprint:
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                stat = os.stat(path)
            except OSError:  # removed while walked: the next poll sees the folder settled
                continue
            files.append((os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


class RepositoryPoller:
    """Loads, reloads and unloads repository models as their folders change."""

    def __init__(self, registry: ModelRegistry, repository: Path, interval_s: float) -> None:
        self._registry = registry
        self._repository = repository
        self._interval_s = interval_s
        self._acted: dict[str, Fingerprint] = {}
        """Each folder as it was when last loaded (or found at start-up)."""
        self._seen: dict[str, Fingerprint] = {}
        """Each folder as the last poll saw it."""
        self._task: asyncio.Task[None] | None = None

    async def baseline(self) -> None:
        """Take the folders as they are now, before the start-up loads: a change made while
        those run is then seen by the first poll."""
        try:
            self._acted = self._seen = await asyncio.to_thread(fingerprints, self._repository)
        except RepositoryUnreadable as error:
            logger.warning("the model repository cannot be read: %s", error)

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
                logger.exception("polling the model repository failed")

    async def poll(self) -> None:
        """Look at the repository once, and act on each folder that settled on a change."""
        try:
            now = await asyncio.to_thread(fingerprints, self._repository)
        except RepositoryUnreadable as error:
            logger.warning("the model repository cannot be read, nothing changed: %s", error)
            return
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

    async def _changed(self, name: str) -> None:
        logger.info("model %s: its folder changed, loading it", name)
        try:
            entry = await self._registry.load(name)
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
