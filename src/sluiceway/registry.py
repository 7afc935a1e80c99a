"""Every model this process serves, with its state: the built-ins and the repository's.

The registry holds one ``ModelEntry`` per name. Built-in models are served from start-up;
repository models are read from their folder and loaded at start-up and on demand, and can be
unloaded and reloaded while the server runs (through a ``ModelHost`` dispatcher). A load is
single-flight per name and never blocks other models' requests: the model is loaded and warmed
beside the running ones and only then routed to. An unload stops admitting at once and finishes
the accepted work first.

States follow Triton's repository extension: ``READY``, ``LOADING``, ``UNLOADING``,
``UNAVAILABLE`` (with a reason: a broken config, a failed load, or unloaded by an operator).

A load may carry Triton's load parameters (``load_parameters.py``): a config used instead of
the folder's, and the model's files, written to a private folder that lives as long as the
version loaded from it serves (the model cache may load it again from there after an eviction).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sluiceway.config import Settings
from sluiceway.errors import (
    BadInput,
    LoadRefused,
    ModelControlError,
    ModelUnavailable,
    SluicewayError,
    UnknownModel,
    load_failed,
    unknown_model,
)
from sluiceway.fleet_entries import FleetEntries, ModelFleet
from sluiceway.inputs.pixels import ImageInput
from sluiceway.kinds import builtin_records, kind_of
from sluiceway.load_parameters import (
    LoadOverride,
    new_private_folder,
    remove_folder,
    write_files,
)
from sluiceway.model_entries import ModelEntry, ModelState
from sluiceway.models.records import ModelRecord
from sluiceway.repository import (
    BrokenModel,
    GivenConfig,
    is_image_classifier,
    is_model_name,
    read_model,
    scan,
)
from sluiceway.runtime.dispatch import Dispatcher, ModelHost
from sluiceway.runtime.memory import keep_large_messages
from sluiceway.triton_config import JSON_SOURCE, ConfigRefused, read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Flight:
    """A load or unload running for one name; ``joinable``: another plain request of the same
    ``kind`` (a load, or an unload) may wait for its answer instead of running again."""

    task: asyncio.Task[ModelEntry]
    joinable: bool
    kind: str


class ModelRegistry:
    """The models of one process and their states; loads and unloads repository models."""

    def __init__(
        self, dispatcher: Dispatcher, settings: Settings, fleet: ModelFleet | None = None
    ) -> None:
        """``fleet``: on a split-mode API node, the workers' models and their control."""
        self._dispatcher = dispatcher
        self._settings = settings
        self._fleet = fleet
        self._builtins = {record.name for record in builtin_records(settings)}
        self.repository = (
            Path(settings.model_repository).expanduser() if settings.model_repository else None
        )
        # An embedded dispatcher serves what it was built with; a split-mode one learns from
        # the live workers what they serve, which may change at any time.
        served = set(dispatcher.models())
        self._entries: dict[str, ModelEntry] = {
            record.name: ModelEntry(record.name, record, ModelState.READY)
            for record in builtin_records(settings)
            if record.name in served or not self._hosts_models
        }
        self._image_inputs: dict[str, ImageInput] = {}
        for entry in self._entries.values():
            self._publish(entry)
        self._busy: dict[str, _Flight] = {}
        self._closed = False
        self._private: dict[str, Path] = {}
        """The private folder of each model whose serving version was loaded from files given
        with its load."""
        self._fleet_entries = (
            FleetEntries(fleet, self.repository, self._entries, self._publish) if fleet else None
        )

    @property
    def image_inputs(self) -> Mapping[str, ImageInput]:
        """What each ready image classifier takes, kept current as models load and unload."""
        return self._image_inputs

    @functools.cached_property
    def _hosts_models(self) -> bool:
        """Whether models run in this process (else split-mode workers run them)."""
        # Read on every inference request; a runtime-checkable protocol's isinstance is slow.
        return isinstance(self._dispatcher, ModelHost)

    async def start(self) -> None:
        """Load every repository model; a broken one is listed as unavailable, with its reason."""
        if self.repository is None:
            return
        if self._hosts_models:
            # Models will come and go here: their memory must go back when they do. Request
            # bodies keep their buffers (runtime/memory.py says why both go together).
            keep_large_messages(self._settings.max_body_bytes)
        records = []
        for found in scan(self.repository):
            if found.name in self._builtin_names():
                logger.warning("repository model %r ignored: a built-in has that name", found.name)
            elif isinstance(found, BrokenModel):
                self._entries[found.name] = ModelEntry(
                    found.name, None, ModelState.UNAVAILABLE, found.reason
                )
            else:
                records.append(found)
        if not self._hosts_models:
            # Split mode: workers serve these from the same folder and load them on first job.
            for record in records:
                entry = ModelEntry(record.name, record, ModelState.READY)
                self._entries[record.name] = entry
                self._publish(entry)
            return
        # One after another: ten sessions built at once hold ten times a build's working
        # memory over the cache budget (bench/repository), and two cores gain little from more.
        for record in records:
            await self._load_quietly(record.name)

    def entries(self) -> list[ModelEntry]:
        """Every model, by name."""
        names = set(self._entries) | (self._fleet.names() if self._fleet is not None else set())
        return [self.entry(name) for name in sorted(names)]

    def entry(self, name: str) -> ModelEntry:
        """One model's entry; ``UnknownModel`` if there is none of that name.

        A ready model whose last load failed (the birds model offline, a repository file gone
        after an eviction) shows as unavailable with the error, until a load succeeds; in split
        mode, a model no live worker serves shows as unavailable.
        """
        entry = self._entries.get(name)
        if self._fleet_entries is not None and name not in self._builtins:
            return self._fleet_entries.entry(name, entry)
        if entry is None:
            raise UnknownModel(unknown_model(name, sorted(self._entries)))
        if entry.state is not ModelState.READY:
            return entry
        if not self._hosts_models and name not in self._dispatcher.models():
            return ModelEntry(
                name, entry.record, ModelState.UNAVAILABLE, "no live worker serves it"
            )
        error = self._load_error(name)
        if error:
            return ModelEntry(name, entry.record, ModelState.UNAVAILABLE, error)
        return entry

    def ready_record(self, name: str) -> ModelRecord:
        """The record of a model that can take requests now; why not, otherwise."""
        entry = self.entry(name)
        if entry.state is not ModelState.READY or entry.record is None:
            reason = f": {entry.reason}" if entry.reason else ""
            raise ModelUnavailable(f"model {name!r} is {entry.state.lower()}{reason}")
        return entry.record

    async def load(
        self, name: str, override: LoadOverride | None = None, *, fresh: bool = False
    ) -> ModelEntry:
        """Read ``name``'s folder again and (re)load it; the running version serves meanwhile.

        With ``override`` (a load request's parameters), its config is used instead of the
        folder's, and its files (if any) instead of the folder; a later load without one reads
        the folder again, as Triton does. ``LoadRefused`` when the override cannot be used.

        ``fresh``: never answer with the result of a load running now, which may have read
        the folder before a change the caller saw (``repository_poll.py``): wait for it to end,
        then read the folder again."""
        fleet = self._fleet_entries
        if fleet is not None:
            if override is not None:
                self._check_controllable(name)
                raise LoadRefused(
                    "load parameters (config, files) are not passed on to split-mode workers, "
                    "which load models from the shared repository folder: change the folder, "
                    "then load without parameters"
                )
            return await self._single_flight(name, fleet.load, "load")
        if override is None:
            return await self._single_flight(name, self._load, "load", joinable=not fresh)
        return await self._single_flight(
            name, lambda name: self._load(name, override), "load", joinable=False
        )

    async def unload(self, name: str) -> ModelEntry:
        """Stop serving ``name`` once its accepted requests are answered."""
        fleet = self._fleet_entries
        action = fleet.unload if fleet is not None else self._unload
        return await self._single_flight(name, action, "unload")

    @property
    def builtin_names(self) -> frozenset[str]:
        """The built-in models' names, which no repository folder can take."""
        return frozenset(self._builtins)

    async def forget(self, name: str) -> None:
        """Unload ``name`` (if it serves) and list it no more: its folder is gone from the
        repository (``repository_poll.py``). A model whose folder is back by then stays, and
        so does one serving from files given with its load, which never needed the folder."""
        await self._single_flight(name, self._forget, "unload", joinable=False)

    async def _forget(self, name: str) -> ModelEntry:
        assert self.repository is not None  # ``_single_flight`` refuses without one
        gone = ModelEntry(name, None, ModelState.UNAVAILABLE, "its folder is gone")
        current = self._entries.get(name)
        if current is None:  # never listed (a load that found no folder)
            return gone
        if name in self._private or await asyncio.to_thread((self.repository / name).is_dir):
            return current
        await self._unload(name)
        del self._entries[name]
        return gone

    async def _single_flight(
        self, name: str, action: Any, kind: str, *, joinable: bool = True
    ) -> ModelEntry:
        """Run ``action(name)`` unless a request of the same ``kind`` for ``name`` runs: then
        answer with that one's result. A request of the other kind, or a load with parameters,
        runs after the one running (a load never answers with an unload's result)."""
        self._check_controllable(name)
        if self._closed:
            raise ModelUnavailable("shutting down: models are not loaded or unloaded any more")
        while (busy := self._busy.get(name)) is not None:
            if joinable and busy.joinable and busy.kind == kind:
                return await asyncio.shield(busy.task)
            await asyncio.wait([busy.task])
        task = asyncio.create_task(action(name), name=f"model control {name}")
        flight = _Flight(task, joinable, kind)
        self._busy[name] = flight

        def done(_: object) -> None:
            if self._busy.get(name) is flight:
                del self._busy[name]

        flight.task.add_done_callback(done)
        # Shielded: an operator's client that hangs up must not cancel a load half-way.
        return await asyncio.shield(flight.task)

    def _check_controllable(self, name: str) -> None:
        if not is_model_name(name):  # before any path is made of it (gRPC names may hold '/')
            raise BadInput(
                f"{name!r} is not a model name: 1-64 letters, digits, '_', '.' or '-', starting "
                "with a letter or digit"
            )
        if name in self._builtin_names():
            raise ModelControlError(f"{name!r} is a built-in model: it is always served")
        if self.repository is None:
            raise ModelControlError(
                "no model repository: start with SLUICEWAY_MODEL_REPOSITORY=<folder>"
            )
        if not self._hosts_models and self._fleet is None:
            raise ModelControlError("this dispatcher's models cannot be loaded or unloaded")

    async def _load(self, name: str, override: LoadOverride | None = None) -> ModelEntry:
        assert self.repository is not None
        folder = self.repository / name
        current = self._entries.get(name)
        given = None
        if override is not None:
            # In a thread: a config of megabytes takes seconds to parse.
            given = await asyncio.to_thread(self._given, name, current, folder, override)
        private = None
        if override is None or not override.files:
            if not folder.is_dir():
                hint = ": or give its files with the load ('file:1/model.onnx')" if given else ""
                raise UnknownModel(
                    f"{load_failed(name)}: no folder {name!r} in the model repository{hint}"
                )
        else:
            try:
                private = folder = new_private_folder()  # known here, whatever happens below
            except OSError as error:
                raise LoadRefused(
                    f"no folder could be made for the model's files: {error}"
                ) from None
        try:
            if private is not None and override is not None:
                await asyncio.to_thread(write_files, private, override.files)
            entry = await self._install(name, current, folder, given)
        except BaseException:
            if private is not None:
                await asyncio.to_thread(remove_folder, private)
            raise
        if entry.state is ModelState.READY:
            # The version replaced has finished its work: its private folder (if any) can go.
            replaced = self._private.pop(name, None)
            if private is not None:
                self._private[name] = private
            if replaced is not None:
                await asyncio.to_thread(remove_folder, replaced)
        elif private is not None:
            await asyncio.to_thread(remove_folder, private)
        return entry

    def _given(
        self, name: str, current: ModelEntry | None, folder: Path, override: LoadOverride
    ) -> GivenConfig:
        """The load's config as the repository's keys; refused before anything changes."""
        record = current.record if current is not None else None
        if (record is not None and record.image is not None) or (
            not override.files and is_image_classifier(folder)
        ):
            raise self._refused(
                name,
                current,
                "it is an image classifier, whose [image] table in config.toml has no form in "
                "Triton's config: change the folder's config.toml and load without parameters",
            )
        try:
            return GivenConfig(name, read_json(override.config, name), JSON_SOURCE)
        except ConfigRefused as refused:
            raise self._refused(name, current, str(refused)) from None

    async def _install(
        self, name: str, current: ModelEntry | None, folder: Path, given: GivenConfig | None
    ) -> ModelEntry:
        """Read ``folder`` (with ``given``'s config, if any) and serve the model it holds."""
        # In a thread: a config without its tensors has them read from the model file.
        found = await asyncio.to_thread(read_model, folder, given)
        by_request = given is not None
        if isinstance(found, BrokenModel):
            return self._failed(name, current, found.reason, by_request)
        if current is None or current.state is not ModelState.READY:
            self._entries[name] = ModelEntry(name, found, ModelState.LOADING)
        host = self._host()
        try:
            kind = kind_of(found, self._settings)
            await host.install(kind, found.warmup)
        except SluicewayError as error:
            return self._failed(name, current, str(error), by_request)
        except Exception as error:  # a bug must not leave the model LOADING for ever
            logger.exception("loading model %s failed unexpectedly", name)
            return self._failed(name, current, f"unexpected error: {error}", by_request)
        entry = ModelEntry(name, found, ModelState.READY)
        self._entries[name] = entry
        self._publish(entry)
        logger.info("model %s version %s is ready", name, found.version)
        return entry

    def _failed(
        self, name: str, current: ModelEntry | None, reason: str, by_request: bool = False
    ) -> ModelEntry:
        """A failed (re)load: a version already serving keeps serving; say why either way.
        ``by_request``: the load's own parameters are the cause (a 400, not a conflict)."""
        logger.warning("model %s did not load: %s", name, reason)
        if current is not None and current.state is ModelState.READY:
            if by_request:
                raise self._refused(name, current, reason)
            raise ModelControlError(
                f"{name}: the new version did not load ({reason}); "
                f"version {current.version} still serves"
            )
        entry = ModelEntry(name, None, ModelState.UNAVAILABLE, reason)
        self._entries[name] = entry
        return entry

    async def _unload(self, name: str) -> ModelEntry:
        # The entry as installed: one whose last reload failed (shown unavailable) still serves.
        entry = self._entries.get(name)
        if entry is None or entry.state is not ModelState.READY:
            return self.entry(name)
        entry.state = ModelState.UNLOADING
        self._image_inputs.pop(name, None)
        await self._host().uninstall(name)
        entry = ModelEntry(name, entry.record, ModelState.UNAVAILABLE, "unloaded")
        self._entries[name] = entry
        private = self._private.pop(name, None)
        if private is not None:
            await asyncio.to_thread(remove_folder, private)
        logger.info("model %s unloaded", name)
        return entry

    async def close(self) -> None:
        """Let loads and unloads running end (within the request timeout), then remove the
        private folders of models loaded from files given with their load."""
        self._closed = True  # no new load or unload starts from here
        running = [flight.task for flight in self._busy.values()]
        if running:
            _, late = await asyncio.wait(running, timeout=self._settings.request_timeout_s)
            for task in late:  # their own clean-up removes what they wrote
                task.cancel()
            await asyncio.wait(running)
        while self._private:
            remove_folder(self._private.popitem()[1])

    @staticmethod
    def _refused(name: str, current: ModelEntry | None, reason: str) -> LoadRefused:
        serving = current is not None and current.state is ModelState.READY
        still = f"; version {current.version} still serves" if serving and current else ""
        return LoadRefused(f"{load_failed(name)}: {reason}{still}")

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.load(name)
        except SluicewayError as error:
            logger.warning("model %s did not load: %s", name, error)

    def _publish(self, entry: ModelEntry) -> None:
        if entry.record is not None and entry.record.image is not None:
            self._image_inputs[entry.name] = entry.record.image

    def _builtin_names(self) -> set[str]:
        return self._builtins

    def _host(self) -> ModelHost:
        assert isinstance(self._dispatcher, ModelHost)
        return self._dispatcher

    def _load_error(self, name: str) -> str | None:
        if self._hosts_models:
            return cast(ModelHost, self._dispatcher).load_error(name)
        return None
