"""The model registry's split-mode half: repository models as the workers report them.

On a split-mode API node the workers run the repository's models; the node reads the same
folder for each model's record (its tensors, labels, image input) and takes its state from
the fleet (``registry.ModelFleet``: the desired state and the live workers' reports). A record
is read again when the model's generation changes, so a model loaded through another node, or
a new version of it, is described as the workers now serve it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sluiceway.errors import ModelControlError, UnknownModel, load_failed, unknown_model
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.repository import BrokenModel, read_model


class FleetStatus(Protocol):
    """A model's state as split-mode workers report it, combined (``split/control.py``)."""

    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def version(self) -> str: ...


class ModelFleet(Protocol):
    """Models other processes serve (split-mode workers), loaded and unloaded through a
    desired state they converge to (``split/fleet.py``)."""

    def status(self, name: str) -> FleetStatus | None:
        """The model's combined state; ``None`` if nothing names it."""

    def names(self) -> set[str]:
        """Every model operators or live workers name."""

    def generation(self, name: str) -> int:
        """The generation of the last load or unload of ``name``."""

    async def load(self, name: str) -> FleetStatus:
        """Have every worker (re)load ``name``."""

    async def unload(self, name: str) -> FleetStatus:
        """Have every worker unload ``name``."""


class FleetEntries:
    """Entries of repository models served by split-mode workers, and their control."""

    def __init__(
        self,
        fleet: ModelFleet,
        repository: Path | None,
        entries: dict[str, ModelEntry],
        publish: Callable[[ModelEntry], None],
    ) -> None:
        """``entries`` and ``publish``: the registry's own, kept current here."""
        self._fleet = fleet
        self._repository = repository
        self._entries = entries
        self._publish = publish
        self._generations: dict[str, int] = {}  # the fleet generation each record was read at

    def entry(self, name: str, known: ModelEntry | None) -> ModelEntry:
        """``name``'s entry: its record, and its state as the live workers report it."""
        status = self._fleet.status(name)
        if status is None:
            if known is None:
                raise UnknownModel(unknown_model(name, sorted(self._entries)))
            if known.state is ModelState.UNAVAILABLE:  # its folder is broken here too
                return known
            reason = "no live worker serves it"
            return ModelEntry(name, known.record, ModelState.UNAVAILABLE, reason)
        known = self._current(name, known, status)
        state = ModelState(status.state)
        if state is ModelState.READY and (known is None or known.record is None):
            reason = "its folder is missing or broken on this API node"
            return ModelEntry(name, None, ModelState.UNAVAILABLE, reason)
        return ModelEntry(name, known.record if known else None, state, status.reason)

    async def load(self, name: str) -> ModelEntry:
        """Check ``name``'s folder here, then have every worker (re)load it."""
        folder = self._folder(name)
        found = await asyncio.to_thread(read_model, folder)  # may read the model file
        if isinstance(found, BrokenModel):
            current = self._entries.get(name)
            if current is not None and self.entry(name, current).state is ModelState.READY:
                raise ModelControlError(
                    f"{name}: the new version cannot load ({found.reason}); "
                    f"version {current.version} still serves"
                )
            entry = ModelEntry(name, None, ModelState.UNAVAILABLE, found.reason)
            self._entries[name] = entry
            return entry
        status = await self._fleet.load(name)
        if status.state == ModelState.READY and status.reason:  # an older version serves
            raise ModelControlError(f"{name}: {status.reason}")
        return self.entry(name, self._entries.get(name))

    async def unload(self, name: str) -> ModelEntry:
        """Have every worker unload ``name`` once its accepted requests are answered."""
        current = self.entry(name, self._entries.get(name))  # UnknownModel for no such model
        await self._fleet.unload(name)
        return self.entry(name, current)

    def _current(
        self, name: str, known: ModelEntry | None, status: FleetStatus
    ) -> ModelEntry | None:
        """``known``, its record read again from the folder if the model changed since (and
        the workers serve the version now there)."""
        generation = self._fleet.generation(name)
        if known is not None and self._generations.get(name, 0) == generation:
            return known
        self._generations[name] = generation
        if self._repository is None or not (self._repository / name).is_dir():
            return known
        found = read_model(self._repository / name)
        if isinstance(found, BrokenModel):
            return known
        if status.version and found.version != status.version and known is not None:
            return known  # a newer version did not load: the workers serve the older one
        entry = ModelEntry(name, found, ModelState.READY)
        self._entries[name] = entry
        self._publish(entry)
        return entry

    def _folder(self, name: str) -> Path:
        if self._repository is None:
            raise ModelControlError(
                "no model repository: start with SLUICEWAY_MODEL_REPOSITORY=<folder>"
            )
        folder = self._repository / name
        if not folder.is_dir():
            raise UnknownModel(f"{load_failed(name)}: no folder {name!r} in the model repository")
        return folder
