"""A load request's parameters, as Triton's repository extension defines them.

A load may carry:

- ``config``: Triton's ``ModelConfig`` as JSON, used instead of the model folder's config file
  (the folder's model and label files are used). It lasts as long as the version it loaded: a
  later load without it reads the folder again, as Triton does.
- ``file:<version>/<name>``: the model's files themselves (bytes over gRPC, base64 over HTTP).
  They replace the model's folder entirely, so Triton requires ``config`` with them: the folder's
  config would not be read. A model given this way needs no folder in the repository.

Any other parameter is refused naming it, as Triton refuses it: silently ignoring a parameter
would leave the caller believing it took effect. The body limit (``SLUICEWAY_MAX_BODY_BYTES``)
bounds the files, over HTTP and gRPC alike.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sluiceway.errors import LoadRefused

CONFIG = "config"
FILE_PREFIX = "file:"
MAX_FILES = 1000
"""Files one load may give: a model is a file or a few (with its labels); many more would only
cost the server time to write and remove."""
MAX_DEPTH = 8
"""Folders deep a given file may be, below the model's folder."""


@dataclass(frozen=True, slots=True)
class LoadOverride:
    """What a load request gives instead of the model's folder: its config (JSON), and maybe
    its files (by path relative to the model's folder, checked to stay inside it)."""

    config: str
    files: dict[str, bytes] = field(default_factory=dict)


def from_http(body: bytes) -> LoadOverride | None:
    """The override a load's HTTP body asks for, or ``None`` for a plain load (an empty body,
    ``{}``, or no parameters); ``LoadRefused`` naming what is wrong."""
    if not body.strip():
        return None
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise LoadRefused(f'the body is not JSON ({error}): send {{"parameters": ...}}') from None
    if not isinstance(request, dict):
        raise LoadRefused('the body must be a JSON object: {"parameters": {...}}')
    parameters = request.get("parameters", {})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise LoadRefused('"parameters" must be a JSON object of parameter names to values')
    config: Any = None
    files: dict[str, bytes] = {}
    for name, value in parameters.items():
        if name == CONFIG:
            if not isinstance(value, str):
                raise LoadRefused(
                    "parameter 'config' must be a string: Triton's ModelConfig as JSON"
                )
            config = value
        elif name.startswith(FILE_PREFIX):
            if not isinstance(value, str):
                raise LoadRefused(f"parameter {name!r} must be the file's bytes in base64")
            try:
                files[name] = base64.b64decode(value, validate=True)
            except binascii.Error as error:
                raise LoadRefused(f"parameter {name!r} is not base64: {error}") from None
        else:
            raise _unrecognized(name)
    return _override(config, files)


def from_grpc(parameters: Mapping[str, Any]) -> LoadOverride | None:
    """The override of a ``RepositoryModelLoadRequest``'s ``parameters`` (a map of
    ``ModelRepositoryParameter``), or ``None`` for a plain load; ``LoadRefused`` otherwise."""
    config: Any = None
    files: dict[str, bytes] = {}
    for name, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if name == CONFIG:
            if kind != "string_param":
                raise LoadRefused("parameter 'config' must be a string_param: JSON, as Triton's")
            config = value.string_param
        elif name.startswith(FILE_PREFIX):
            if kind != "bytes_param":
                raise LoadRefused(f"parameter {name!r} must be a bytes_param: the file's bytes")
            files[name] = value.bytes_param
        else:
            raise _unrecognized(name)
    return _override(config, files)


def _override(config: Any, files: dict[str, bytes]) -> LoadOverride | None:
    if config is None and not files:
        return None
    if config is None:
        raise LoadRefused(
            "file parameters need a config parameter too: the files replace the model's folder, "
            "so its config file is not read (Triton requires the same)"
        )
    if not isinstance(config, str):
        raise LoadRefused("parameter 'config' must be a string: Triton's ModelConfig as JSON")
    if len(files) > MAX_FILES:
        raise LoadRefused(f"a load gives at most {MAX_FILES} files; this one gives {len(files)}")
    return LoadOverride(config, {_relative_path(name): data for name, data in files.items()})


def _relative_path(name: str) -> str:
    """The path a ``file:`` parameter names, inside the model's folder; refused if it could
    reach outside it (absolute, ``..``) or is not a plain path."""
    path = name.removeprefix(FILE_PREFIX)
    parts = path.split("/")
    if (
        path.startswith("/")
        or any(part in ("", ".", "..") for part in parts)
        or "\0" in path
        or len(parts) > MAX_DEPTH + 1
    ):
        raise LoadRefused(
            f"parameter {name!r} does not name a file inside the model's folder: give a "
            "relative path such as 'file:1/model.onnx', without '..'"
        )
    return path


def _unrecognized(name: str) -> LoadRefused:
    return LoadRefused(
        f"unrecognized load parameter {name!r}: a load takes 'config' (Triton's ModelConfig as "
        "JSON) and 'file:<version>/<file name>' parameters"
    )


def new_private_folder() -> Path:
    """A new, empty folder readable by this user alone (made on the caller's thread, so whoever
    made it always knows it, whatever happens while it is filled)."""
    return Path(tempfile.mkdtemp(prefix="sluiceway-load-"))


def write_files(root: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` (relative paths checked by ``from_http`` / ``from_grpc``) into ``root``,
    the model's folder while the version it holds serves."""
    try:
        for relative, data in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("xb") as file:  # "x": never through an entry already there
                file.write(data)
    except OSError as error:
        raise LoadRefused(f"the model's files could not be written as given: {error}") from None


def remove_folder(folder: Path) -> None:
    """Remove a private folder and what it holds (gone already is fine)."""
    shutil.rmtree(folder, ignore_errors=True)
