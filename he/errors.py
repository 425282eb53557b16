"""Errors a user of he/ can cause. Each says what was wrong and what to do."""

from __future__ import annotations


class HEError(ValueError):
    """Base class for every error raised by he/."""


class UnsupportedLayerError(HEError):
    """The model holds a layer that cannot be evaluated under CKKS."""


class DepthError(HEError):
    """The model needs more multiplicative levels than the parameters provide."""


class ContextMismatchError(HEError):
    """A ciphertext, output or plan was made under a different key/context."""


class ShapeError(HEError):
    """Input tensor or batch has the wrong shape or size."""


class MissingKeyError(HEError):
    """The public context lacks a key (Galois or relinearization) the evaluation needs."""


class PlanMismatchError(HEError):
    """The plan was compiled from a different model (or the model changed since)."""


class SerializationError(HEError):
    """Bytes that are not a valid serialized he/ object."""
