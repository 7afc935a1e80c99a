"""A model's entry in the registry: its record, its state and why it is not ready.

Its own module so that the registry's split-mode half (``fleet_entries``) and the API can name
entries without importing the registry that uses them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sluiceway.models.records import ModelRecord
from sluiceway.models.tensors import TensorSpec


class ModelState(enum.StrEnum):
    """Where a model is in its life, in the repository extension's words."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(slots=True)
class ModelEntry:
    """One model's record (when it could be read), state and why it is not ready."""

    name: str
    record: ModelRecord | None
    state: ModelState
    reason: str = ""

    @property
    def version(self) -> str:
        return self.record.version if self.record is not None else ""

    def as_json(self) -> dict[str, Any]:
        """The model-list entry (``GET /v1/models``)."""
        record = self.record
        body: dict[str, Any] = {"name": self.name, "version": self.version, "state": self.state}
        if self.reason:
            body["reason"] = self.reason
        if record is not None:
            body["kind"] = record.kind
            body["builtin"] = record.builtin
            body["inputs"] = [_tensor(spec) for spec in record.inputs]
            body["outputs"] = [_tensor(spec) for spec in record.outputs]
            if record.image is not None:
                body["classify"] = f"/v1/models/{self.name}/classify"
                body["image"] = {
                    "size": record.image.size,
                    "layout": record.image.layout,
                    "dtype": record.image.dtype,
                }
            if record.takes_tensors:
                body["infer"] = f"/v1/models/{self.name}/infer"
        return body


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
