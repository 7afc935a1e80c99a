"""Triton's ``config.pbtxt``, read into the keys of the repository's ``config.toml``.

A Triton user's model repository works as it is: a folder whose config is Triton's is served
with what that config says, and a folder of an ONNX model without any config is completed from
the file, as Triton's auto-complete does. What Sluiceway cannot honour (another framework,
sequence batching, ensembles, GPUs, shape tensors) makes the model unavailable with the
reason, never served differently in silence; settings that only tune Triton itself (its graph
optimisation, preferred batch sizes, priority levels, the response cache...) are read and not
acted on: the README lists them.

The text is parsed by protobuf into the ``ModelConfig`` message tritonclient generates from
Triton's ``model_config.proto`` (the ``grpc`` extra), so every field Triton knows is read as
Triton reads it and a misspelt one is an error naming its line. The same message comes as JSON
with a load request (Triton's ``config`` load parameter, ``read_json``): both forms go through
``config_keys``, so a folder's config and a load's config mean the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 4
"""Triton's ``default-max-batch-size``: what auto-complete gives a model whose file batches."""

DEFAULT_INSTANCES = 2
"""Triton's instance count for an ONNX Runtime model on the CPU when its config gives none."""

ONNX_PLATFORMS = {"onnxruntime_onnx"}
ONNX_BACKENDS = {"onnxruntime"}

FIELDS = {
    "max_batch_size": "max_batch_size",
    "inputs": "input",
    "outputs": "output",
    "labels": "output.label_filename",
    "max_queue_delay_ms": "dynamic_batching.max_queue_delay_microseconds",
    "max_queue": "dynamic_batching.default_queue_policy.max_queue_size",
    "instances": "instance_group.count",
    "model_file": "default_model_filename",
    "threads": "parameters.intra_op_thread_count",
}
"""The ``config.pbtxt`` field each ``config.toml`` key comes from: errors name what was written."""


class ConfigRefused(ValueError):
    """A Triton config (a ``config.pbtxt``, or a load's) Sluiceway cannot serve as written;
    the message says why."""


PBTXT_SOURCE = "config.pbtxt"
JSON_SOURCE = "the load's config"
"""What a refusal names as the config it refuses: a folder's file, or a load request's."""


@dataclass(frozen=True)
class TritonKeys:
    """What a Triton config (or none) says, as ``config.toml`` keys, and what those keys
    cannot say: whether the batch size is auto-complete's to decide, and the versions named."""

    keys: dict[str, Any]
    auto_batch: bool = False
    """No batch size and not every tensor given: ``DEFAULT_MAX_BATCH_SIZE`` if the file
    batches (then the declared dims gain the batch dimension), else 0."""
    versions: tuple[int, ...] = ()
    """The versions a ``specific`` policy names: the highest with a folder is served."""
    several_versions: str = ""
    """A policy that would serve more than one version in Triton (said in the log)."""
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)


def read_pbtxt(text: str, folder_name: str) -> TritonKeys:
    """What ``text`` (a ``config.pbtxt``) says."""
    model_config_pb2 = _messages(PBTXT_SOURCE)
    from google.protobuf import text_format  # protobuf comes with tritonclient's grpc extra

    try:
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise ConfigRefused(f"config.pbtxt is not Triton's model configuration: {error}") from None
    return config_keys(config, folder_name, PBTXT_SOURCE, "its folder")


def read_json(text: str, model_name: str) -> TritonKeys:
    """What ``text``, Triton's ``ModelConfig`` as JSON (the ``config`` parameter of a load
    request), says."""
    model_config_pb2 = _messages(JSON_SOURCE)
    from google.protobuf import json_format  # protobuf comes with tritonclient's grpc extra

    if not text.lstrip().startswith("{"):
        raise ConfigRefused(f"{JSON_SOURCE} must be a JSON object: Triton's ModelConfig")
    try:
        config = json_format.Parse(text, model_config_pb2.ModelConfig())
    except (json_format.ParseError, ValueError) as error:
        raise ConfigRefused(f"{JSON_SOURCE} is not Triton's model configuration: {error}") from None
    return config_keys(config, model_name, JSON_SOURCE, "the model loaded")


def _messages(source: str) -> Any:
    """tritonclient's ``model_config_pb2`` (the ``grpc`` extra), or why it cannot be read."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient without its grpc part raises the latter
        instead = "; or write a config.toml" if source == PBTXT_SOURCE else ""
        raise ConfigRefused(
            f"reading {source} needs the grpc extra (pip install 'sluiceway[grpc]'), which "
            f"brings Triton's ModelConfig message{instead}"
        ) from None
    return model_config_pb2


def auto_config() -> TritonKeys:
    """A model folder without a config: an ONNX model, completed from its file."""
    return TritonKeys(
        {"platform": "onnx", "max_batch_size": 0, "instances": DEFAULT_INSTANCES}, auto_batch=True
    )


def config_keys(config: Any, name: str, source: str, named_by: str) -> TritonKeys:
    """What ``config`` (a ``ModelConfig`` message) says for the model ``name``; ``source`` is
    the config's name in refusals, ``named_by`` what names the model (its folder, or the load
    request)."""
    if config.name and config.name != name:
        raise ConfigRefused(
            f"{source} names the model {config.name!r}, but {named_by} is {name!r}: "
            "Triton requires them to match"
        )
    _check_platform(config.platform, config.backend, source)
    for name, what in (
        ("sequence_batching", "sequence batching (stateful models)"),
        ("ensemble_scheduling", "ensembles"),
    ):
        if config.HasField(name):
            raise ConfigRefused(f"{source} asks for {what}, which Sluiceway does not serve")
    if config.batch_input or config.batch_output:
        raise ConfigRefused(
            f"{source} has batch_input or batch_output (ragged batching), which Sluiceway "
            "does not serve"
        )
    if config.model_transaction_policy.decoupled:
        raise ConfigRefused(f"{source} asks for a decoupled model, which Sluiceway does not serve")
    keys: dict[str, Any] = {"platform": "onnx", "max_batch_size": config.max_batch_size}
    inputs = [_tensor(tensor, "input") for tensor in config.input]
    outputs = [_tensor(tensor, "output") for tensor in config.output]
    if inputs:
        keys["inputs"] = inputs
    if outputs:
        keys["outputs"] = outputs
    labels = [tensor.label_filename for tensor in config.output if tensor.label_filename]
    if len(set(labels)) > 1:
        raise ConfigRefused(f"{source} names more than one label_filename; Sluiceway takes one")
    if labels:
        keys["labels"] = labels[0]
    if config.HasField("dynamic_batching"):
        batching = config.dynamic_batching
        keys["max_queue_delay_ms"] = batching.max_queue_delay_microseconds / 1000
        queue = batching.default_queue_policy.max_queue_size
        if queue > 0:  # 0: Triton's unbounded queue; Sluiceway keeps its bound
            keys["max_queue"] = queue
    keys["instances"] = _instances(config.instance_group)
    if config.default_model_filename:
        keys["model_file"] = config.default_model_filename
    threads = config.parameters.get("intra_op_thread_count")
    if threads is not None and threads.string_value.strip():
        try:
            count = int(threads.string_value)
        except ValueError:
            raise ConfigRefused(
                f"parameter intra_op_thread_count is {threads.string_value!r}, not a number"
            ) from None
        if count > 0:  # 0: ONNX Runtime's own choice, as Sluiceway's default
            keys["threads"] = count
    if config.model_warmup:
        keys["warmup"] = {}
    versions, several = _versions(config.version_policy)
    return TritonKeys(
        keys,
        # As Triton's auto-complete: only a config giving every tensor keeps max_batch_size 0.
        auto_batch=config.max_batch_size == 0 and not (inputs and outputs),
        versions=versions,
        several_versions=several,
    )


def _check_platform(platform: str, backend: str, source: str) -> None:
    if not platform and not backend:
        return  # Triton's auto-complete finds the backend by the file: model.onnx
    if platform and platform not in ONNX_PLATFORMS:
        raise ConfigRefused(
            f"{source}'s platform {platform!r} is not served: Sluiceway serves ONNX models "
            "from Triton's config (platform onnxruntime_onnx or backend onnxruntime)"
        )
    if backend and backend not in ONNX_BACKENDS:
        raise ConfigRefused(
            f"{source}'s backend {backend!r} is not served: Sluiceway serves ONNX models "
            "from Triton's config (platform onnxruntime_onnx or backend onnxruntime)"
        )


def _tensor(tensor: Any, role: str) -> dict[str, Any]:
    from tritonclient.grpc import model_config_pb2

    name = tensor.name
    if tensor.is_shape_tensor:
        raise ConfigRefused(f"{role} {name!r} is a shape tensor, which Sluiceway does not serve")
    if role == "input" and (tensor.optional or tensor.allow_ragged_batch):
        what = "optional" if tensor.optional else "a ragged batch"
        raise ConfigRefused(f"input {name!r} allows {what}, which Sluiceway does not serve")
    datatype = _named(model_config_pb2.DataType, tensor.data_type, f"{role} {name!r}'s data_type")
    datatype = datatype.removeprefix("TYPE_")
    if datatype == "INVALID":
        raise ConfigRefused(f"{role} {name!r} has no data_type")
    keys: dict[str, Any] = {
        "name": name,
        "datatype": "BYTES" if datatype == "STRING" else datatype,
        "dims": list(tensor.dims),
    }
    if tensor.HasField("reshape"):  # the file's shape; requests and answers have the dims
        keys["reshape"] = list(tensor.reshape.shape)
    if role == "input" and tensor.format != model_config_pb2.ModelInput.FORMAT_NONE:
        layout = _named(
            model_config_pb2.ModelInput.Format, tensor.format, f"input {name!r}'s format"
        )
        keys["format"] = layout.removeprefix("FORMAT_")
    return keys


def _named(enum: Any, number: int, what: str) -> str:
    """The name of ``number`` in a config enum. A config's enums are open (a text config may
    give any number), so one this version does not know is a refusal naming it."""
    try:
        name: str = enum.Name(number)
    except ValueError:
        raise ConfigRefused(f"{what} is {number}, which is none of {list(enum.keys())}") from None
    return name


def _instances(groups: Any) -> int:
    """The model calls that may run at once: every group's count, a group without one (or no
    group at all) counting Triton's default for ONNX Runtime on the CPU."""
    from tritonclient.grpc import model_config_pb2

    kind = model_config_pb2.ModelInstanceGroup.Kind
    if not groups:
        return DEFAULT_INSTANCES
    total = 0
    for group in groups:
        if group.kind in (kind.KIND_GPU, kind.KIND_MODEL):
            raise ConfigRefused(
                f"instance group {group.name or '(unnamed)'!r} asks for "
                f"{kind.Name(group.kind)}: Sluiceway runs models on the CPU"
            )
        # KIND_AUTO (with or without gpus) is the CPU on a machine without a GPU, as in Triton.
        total += group.count if group.count > 0 else DEFAULT_INSTANCES
    return total


def _versions(policy: Any) -> tuple[tuple[int, ...], str]:
    """The versions a ``specific`` policy names, and what a policy serving several versions
    would serve in Triton (Sluiceway serves one version of a model at a time: the highest)."""
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        named = tuple(sorted({int(v) for v in policy.specific.versions}))
        return named, (f"versions {list(named)}" if len(named) > 1 else "")
    if which == "all":
        return (), "every version"
    if which == "latest" and policy.latest.num_versions > 1:
        return (), f"the latest {policy.latest.num_versions} versions"
    return (), ""
