"""A model repository: a folder with one subfolder per model, each a file and its config.

The layout is Triton's, and so may be the config: a folder holds Sluiceway's ``config.toml``,
or Triton's ``config.pbtxt`` (``triton_config.py`` reads it), or no config for an ONNX model
(completed from the file, as Triton's auto-complete does)::

    models/
      my-classifier/
        config.toml
        labels.txt              # optional, one class name per line
        1/model.onnx            # numbered versions; the highest is served unless
        2/model.onnx            # ``version`` in config.toml names one
      tabular/
        config.pbtxt            # Triton's, as it is
        model.onnx              # or no version folders at all (version "1")

``config.toml`` says what Triton's ``config.pbtxt`` says (see the README for every key); where
a folder has both, ``config.toml`` is read. Reading a folder never raises: a model whose config
or file is wrong comes back as a ``BrokenModel`` saying why, and the others are served.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sluiceway.errors import ModelUnavailable
from sluiceway.inputs.pixels import Fit, ImageInput
from sluiceway.models.base import BatchPolicy
from sluiceway.models.onnx_model import read_signature
from sluiceway.models.records import ModelRecord, ModelSource, SourceKind
from sluiceway.models.tensors import DATATYPES, TensorSpec
from sluiceway.triton_config import (
    DEFAULT_MAX_BATCH_SIZE,
    ConfigRefused,
    TritonKeys,
    auto_config,
    read_pbtxt,
)

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
TRITON_CONFIG_FILE = "config.pbtxt"
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite"}
PLATFORMS = {"onnx": "onnx", "onnxruntime_onnx": "onnx", "tflite": "tflite"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_model_name(name: str) -> bool:
    """Whether ``name`` can name a repository model (and so a folder inside the repository:
    no separator, no ``..``)."""
    return bool(_NAME.match(name))


def is_image_classifier(folder: Path) -> bool:
    """Whether the folder's ``config.toml`` makes its model an image classifier (an ``[image]``
    table, which Triton's config has no form for)."""
    try:
        return "image" in tomllib.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


@dataclass(frozen=True, slots=True)
class GivenConfig:
    """A config given instead of the folder's (a load request's ``config``): the model's name,
    what the config says, and its name in refusals."""

    name: str
    triton: TritonKeys
    source: str


@dataclass(frozen=True, slots=True)
class BrokenModel:
    """A repository entry that cannot be served, and why (shown on the model list)."""

    name: str
    reason: str


class _Tensor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[str, Field(min_length=1)]
    datatype: Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
    dims: list[Annotated[int, Field(ge=-1)]]
    reshape: list[Annotated[int, Field(ge=-1)]] | None = None
    """The model file's shape, where it differs from ``dims`` (Triton's ``reshape``)."""
    format: Literal["NCHW", "NHWC"] | None = None
    """An image input's layout (Triton's ``format``), said in the model's config."""


class _Image(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    size: Annotated[int, Field(ge=8, le=4096)]
    fit: Fit = Fit.SHORTER_SIDE_CROP
    resize: Annotated[int, Field(ge=0, le=8192)] = 0
    layout: Literal["NHWC", "NCHW"] = "NCHW"
    dtype: Literal["uint8", "float32"] = "float32"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    logits: bool = True


class _Warmup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: dict[str, Any] | None = None


class RepositoryConfig(BaseModel):
    """``config.toml``: the keys of Triton's ``config.pbtxt`` that Sluiceway uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    platform: str
    max_batch_size: Annotated[int, Field(ge=0, le=4096)] = 8
    max_queue_delay_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    instances: Annotated[int, Field(ge=1, le=256)] = 1
    max_queue: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    threads: Annotated[int, Field(ge=1, le=64)] = 1
    memory_arena: bool = False
    wide: bool = True
    version: Annotated[int, Field(ge=1)] | None = None
    model_file: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] | None = None
    labels: str | None = None
    inputs: list[_Tensor] = []
    outputs: list[_Tensor] = []
    image: _Image | None = None
    warmup: _Warmup | None = None


def scan(folder: Path) -> list[ModelRecord | BrokenModel]:
    """Every model in ``folder``, by name; entries that cannot be served say why."""
    if not folder.is_dir():
        return [BrokenModel("*", f"the model repository {str(folder)!r} is not a folder")]
    entries: list[ModelRecord | BrokenModel] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            entries.append(read_model(entry))
    return entries


def read_model(folder: Path, given: GivenConfig | None = None) -> ModelRecord | BrokenModel:
    """The record of the model in ``folder`` (named after it), or why it cannot be served.

    With ``given``, the model is ``given.name`` and its config is ``given``'s: the folder's
    config files are not read, only its model and label files.
    """
    name = given.name if given is not None else folder.name
    try:
        return _read(folder, name, given)
    except _Refused as refused:
        logger.warning("model %s is unavailable: %s", name, refused)
        return BrokenModel(name, str(refused))


class _Refused(Exception):
    pass


def _read(folder: Path, name: str, given: GivenConfig | None) -> ModelRecord:
    if not _NAME.match(name):
        raise _Refused("a model's name (its folder's) is 1-64 letters, digits, '_', '.' or '-'")
    triton: TritonKeys | None
    if given is not None:
        raw, source, triton = dict(given.triton.keys), given.source, given.triton
    else:
        raw, source, triton = _raw_config(folder)
    try:
        config = RepositoryConfig.model_validate(raw)
    except ValidationError as error:
        fields = triton.fields if triton is not None else {}
        raise _Refused(f"{source}: {_describe(error, fields)}") from None
    platform = PLATFORMS.get(config.platform)
    if platform is None:
        raise _Refused(f"platform {config.platform!r} is not one of {sorted(PLATFORMS)}")
    named = triton.versions if triton is not None else ()
    file_name = config.model_file or MODEL_FILES[platform]
    version, path = _model_file(folder, file_name, config.version, named)
    if triton is not None and triton.several_versions:
        logger.warning(
            "model %s: %s asks Triton to serve %s; Sluiceway serves one version of a model at "
            "a time: %s",
            name,
            source,
            triton.several_versions,
            version,
        )
    if triton is not None and triton.auto_batch and _batches(path):
        config = config.model_copy(update={"max_batch_size": DEFAULT_MAX_BATCH_SIZE})
    batched = config.max_batch_size > 0
    labels = _labels(folder, config.labels)
    if platform == "tflite" and config.image is None:
        raise _Refused("a tflite model is served as an image classifier: add an [image] table")
    if config.image is not None and not labels:
        raise _Refused("an image classifier needs its class names: set labels = '<file>'")
    if any(tensor.format is not None for tensor in config.outputs):
        raise _Refused("format is an input's layout (NCHW or NHWC): an output has none")
    inputs = tuple(_spec(t, batched) for t in config.inputs)
    outputs = tuple(_spec(t, batched) for t in config.outputs)
    if config.image is not None and any(
        spec.format not in (None, config.image.layout) for spec in inputs
    ):
        raise _Refused(
            f"an input's format differs from [image] layout ({config.image.layout}): "
            "an image classifier's layout is said once, in [image]"
        )
    if platform == "onnx" and config.image is None:
        inputs, outputs = _completed(path, inputs, outputs, batched)
    image = None
    if config.image is not None:
        image = ImageInput(
            size=config.image.size,
            fit=config.image.fit,
            layout=config.image.layout,
            dtype=config.image.dtype,
            resize=config.image.resize or config.image.size,
            mean=config.image.mean,
            std=config.image.std,
        )
    return ModelRecord(
        name=name,
        kind=f"{platform}-classifier" if image is not None else platform,
        source=ModelSource(SourceKind.FOLDER, str(path)),
        policy=BatchPolicy(
            slots=config.instances,
            max_batch=max(1, config.max_batch_size),
            max_delay_s=config.max_queue_delay_ms / 1000,
            max_queue=config.max_queue,
        ),
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        version=version,
        image=image,
        logits=config.image.logits if config.image is not None else True,
        threads=config.threads,
        memory_arena=config.memory_arena,
        wide=config.wide,
        batched=batched,
        warmup=_warmup(config, inputs) if config.warmup is not None else None,
    )


def _raw_config(folder: Path) -> tuple[dict[str, Any], str, TritonKeys | None]:
    """The folder's config keys, the file they came from, and what Triton's config says
    beyond them: ``config.toml``, else Triton's ``config.pbtxt``, else none at all (an ONNX
    model completed from its file, as Triton's auto-complete does)."""
    for source in (CONFIG_FILE, TRITON_CONFIG_FILE):
        path = folder / source
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if source == CONFIG_FILE:
                return tomllib.loads(text), source, None
            triton = read_pbtxt(text, folder.name)
            return triton.keys, source, triton
        except UnicodeDecodeError as error:
            raise _Refused(f"{source} is not UTF-8 text (byte {error.start})") from None
        except OSError as error:
            raise _Refused(f"{source} cannot be read: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise _Refused(f"{CONFIG_FILE} is not valid TOML: {error}") from None
        except ConfigRefused as refused:
            raise _Refused(str(refused)) from None
    triton = auto_config()
    return triton.keys, "the config completed from the file", triton


def _file_signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The tensors ``path`` declares itself (read once per version of the file)."""
    try:
        stat = path.stat()
        return _signature(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, ModelUnavailable) as error:
        raise _Refused(str(error)) from None


def _batches(path: Path) -> bool:
    """Whether every input and output of the file has a variable first (batch) dimension."""
    inputs, outputs = _file_signature(path)
    return all(spec.shape and spec.shape[0] == -1 for spec in (*inputs, *outputs))


def _model_file(
    folder: Path, file_name: str, wanted: int | None, named: tuple[int, ...] = ()
) -> tuple[str, Path]:
    """The version served and its file: ``wanted``, else the highest of the ``named`` versions
    that has a folder (Triton's ``specific`` policy), else the highest."""
    versions = {int(p.name): p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}
    if wanted is not None:
        if wanted not in versions:
            raise _Refused(f"version {wanted} has no folder; found {sorted(versions) or 'none'}")
        candidates = {wanted: versions[wanted]}
    elif named:
        candidates = {number: versions[number] for number in named if number in versions}
        if not candidates:
            raise _Refused(
                f"none of the versions its config names ({list(named)}) has a folder; found "
                f"{sorted(versions) or 'none'}"
            )
    else:
        candidates = versions
    for number in sorted(candidates, reverse=True):
        path = _file_in(candidates[number], file_name)
        if path is not None:
            return str(number), path
    if wanted is None and not named and (path := _file_in(folder, file_name)) is not None:
        return "1", path
    if any((place / file_name).is_dir() for place in (folder, *candidates.values())):
        raise _Refused(f"the folder {file_name} has no {file_name} inside")
    where = f"version {wanted}" if wanted is not None else "its folder or a version folder"
    if (
        wanted is None
        and not named
        and not any((folder / config).is_file() for config in (CONFIG_FILE, TRITON_CONFIG_FILE))
    ):
        raise _Refused(f"no config.toml or config.pbtxt, and no {file_name} to complete one from")
    raise _Refused(f"no {file_name} in {where}")


def _file_in(folder: Path, file_name: str) -> Path | None:
    """``folder``'s model file: the file, or (Triton's layout for an ONNX model with external
    data) a folder of that name holding a file of that name beside its weight files."""
    path = folder / file_name
    if path.is_file():
        return path
    inner = path / file_name
    return inner if path.is_dir() and inner.is_file() else None


def _labels(folder: Path, file_name: str | None) -> tuple[str, ...]:
    if file_name is None:
        return ()
    path = (folder / file_name).resolve()
    if folder.resolve() not in path.parents:
        raise _Refused("labels must name a file inside the model's folder")
    if not path.is_file():
        raise _Refused(f"labels file {file_name!r} is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _Refused(
            f"labels file {file_name!r} is not UTF-8 text (byte {error.start})"
        ) from None
    except OSError as error:
        raise _Refused(f"labels file {file_name!r} cannot be read: {error}") from None
    names = tuple(line.strip() for line in text.splitlines())
    return tuple(name for name in names if name)


def _spec(tensor: _Tensor, batched: bool) -> TensorSpec:
    if tensor.format is not None and len(tensor.dims) != 3:
        # As Triton: a layout names three axes (channels, height, width), batch apart.
        raise _Refused(
            f"{tensor.name!r} has format {tensor.format} but dims {tensor.dims}: "
            "a layout needs three dims (channels, height and width; the batch is apart)"
        )
    shape = (-1, *tensor.dims) if batched else tuple(tensor.dims)
    model_shape = None
    if tensor.reshape is not None:
        model_shape = (-1, *tensor.reshape) if batched else tuple(tensor.reshape)
        variable = tensor.dims.count(-1), tensor.reshape.count(-1)
        if variable[1] > 1 or variable[0] != variable[1]:
            raise _Refused(
                f"{tensor.name!r}: a reshape may leave one dimension variable (-1), as its dims do"
            )
        fixed = [d for d in tensor.dims if d != -1], [d for d in tensor.reshape if d != -1]
        if variable == (0, 0) and math.prod(fixed[0]) != math.prod(fixed[1]):
            raise _Refused(
                f"{tensor.name!r} has dims {tensor.dims} and a reshape to {tensor.reshape}: "
                "they must hold as many elements"
            )
    return TensorSpec(tensor.name, tensor.datatype, shape, model_shape, tensor.format)


def _completed(
    path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], batched: bool
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The tensors the config leaves out, read from the file (Triton's auto-complete), so that
    metadata, request checks and the warm-up know them before the model is loaded; declared
    ones checked against the file's, as Triton's ONNX Runtime backend checks them at load."""
    file_inputs, file_outputs = _file_signature(path)
    completed = (inputs or file_inputs, outputs or file_outputs)
    for role, specs, found in (
        ("input", completed[0], file_inputs),
        ("output", completed[1], file_outputs),
    ):
        if specs is not found:
            _check_declared(role, specs, found, batched, every=role == "input")
        if batched:
            for spec in (found_spec for found_spec in found if found_spec.name in _names(specs)):
                if not spec.shape or spec.shape[0] != -1:
                    raise _Refused(
                        f"{role} {spec.name!r} of the file has shape {list(spec.shape)}, no "
                        "variable first (batch) dimension: set max_batch_size = 0 to serve it "
                        "unbatched, or export the model with a variable batch dimension"
                    )
    return completed


def _names(specs: tuple[TensorSpec, ...]) -> set[str]:
    return {spec.name for spec in specs}


def _check_declared(
    role: str,
    declared: tuple[TensorSpec, ...],
    found: tuple[TensorSpec, ...],
    batched: bool,
    *,
    every: bool,
) -> None:
    """Declared tensors against the file's: each one there, of its rank, with its fixed
    dimensions; and (``every``: inputs) none of the file's left out. Types are checked when
    the model loads (``onnx_model.py``)."""
    by_name = {spec.name: spec for spec in found}
    for spec in declared:
        file_spec = by_name.get(spec.name)
        if file_spec is None:
            raise _Refused(
                f"the config declares {role} {spec.name!r}; the file's {role}s are "
                f"{sorted(by_name)}"
            )
        as_model = spec.model_shape if spec.model_shape is not None else spec.shape
        given = list(as_model[1:] if batched else as_model)
        shape = list(file_spec.shape[1:] if batched else file_spec.shape)
        fits = len(given) == len(shape) and all(
            mine == theirs or mine == -1 or theirs == -1
            for mine, theirs in zip(given, shape, strict=True)
        )
        if not fits:
            batch = " after its batch dimension" if batched else ""
            what = "a reshape to" if spec.model_shape is not None else "dims"
            raise _Refused(
                f"{role} {spec.name!r} has {what} {given} in the config, {shape} in the file{batch}"
            )
    missing = sorted(set(by_name) - _names(declared))
    if every and missing:
        raise _Refused(f"the config leaves out the file's {role}s {missing}: declare every one")


@functools.lru_cache(maxsize=256)
def _signature(
    path: str, mtime_ns: int, size: int
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """``read_signature`` once per version of a file: a folder is read again on every load and,
    on a split-mode API node, whenever the workers' generation of the model changes."""
    return read_signature(Path(path))


def _warmup(config: RepositoryConfig, inputs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    """The warm-up request: the config's own inputs, or zeros with every variable dim as 1."""
    given = config.warmup.inputs if config.warmup is not None else None
    if given is None:
        if not inputs:
            raise _Refused("a warm-up without [warmup] inputs needs the model's inputs")
        return {s.name: _zeros(s, config.max_batch_size > 0) for s in inputs}
    specs = {s.name: s for s in inputs}
    request: dict[str, Any] = {}
    for name, data in given.items():
        spec = specs.get(name)
        request[name] = np.asarray(data, dtype=spec.dtype if spec is not None else None)
    return request


def _zeros(spec: TensorSpec, batched: bool) -> np.ndarray:
    """A warm-up input of zeros, every variable dimension 1, in the model's shape (a reshape:
    made in the file's shape, then given the request's)."""
    if spec.model_shape is None:
        return np.zeros([max(d, 1) for d in spec.shape], spec.dtype)
    zeros = np.zeros([max(d, 1) for d in spec.model_shape], spec.dtype)
    shape = [1, *spec.shape[1:]] if batched else list(spec.shape)
    return zeros.reshape(shape)


def _describe(error: ValidationError, fields: Mapping[str, str]) -> str:
    """The problems, each at the key (or the ``config.pbtxt`` field) it is about."""
    parts = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        if loc and loc[0] in fields:
            loc[0] = fields[loc[0]]
        where = ".".join(loc) or "config"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
