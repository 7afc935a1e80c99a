"""Typed runtime errors; the HTTP edge maps each to one status code in one place."""

from __future__ import annotations


class SluicewayError(Exception):
    """Base of every error the runtime raises on purpose."""


class BadInput(SluicewayError):
    """The caller sent something the model cannot take; the message says what."""


class Overloaded(SluicewayError):
    """A bounded queue is full; the caller should retry later."""


class QuotaExceeded(Overloaded):
    """One tenant has its quota of jobs queued; it (and only it) should retry later."""


class DeadlineExceeded(SluicewayError):
    """The job's deadline passed before its result was ready."""


class ModelUnavailable(SluicewayError):
    """The model is unknown, failed to load, or its backend is unreachable."""


class UnknownModel(SluicewayError):
    """No model of that name is served or in the repository."""


def unknown_model(name: str, known: list[str]) -> str:
    """Why ``name`` is refused as unknown. It opens as Triton's message does: its clients'
    scripts (tritonclient's own examples among them) check that opening."""
    return f"Request for unknown model: {name!r} is not found; known: {known}"


def load_failed(name: str) -> str:
    """The opening of a failed load's message, as Triton's (its clients' scripts check it);
    the reason follows."""
    return f"failed to load {name!r}"


class UnknownRegion(SluicewayError):
    """No shared memory region of that name is registered (Triton answers this 404)."""


class ModelControlError(SluicewayError):
    """A load or unload that cannot be done as asked; the message says why."""


class LoadRefused(BadInput):
    """A load request whose parameters (a config, model files) cannot be used as given; the
    message says which and why. A model already serving keeps serving."""


class LogSettingsUnavailable(SluicewayError):
    """The log settings cannot be read or changed here: the process's logging was set up by
    its host, not by ``sluiceway serve``, or a change would reach one worker process of
    several."""
