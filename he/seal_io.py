"""Bytes <-> SEAL objects.

TenSEAL's sealapi binds SEAL's save/load only to file paths, so we round-trip
through a private temporary directory (in /dev/shm when available, i.e. RAM).
SEAL's own format is kept (zstd-compressed, with its header and parameter id),
so a loaded object is validated by SEAL against the context it is loaded into.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from he.errors import SerializationError

_TMP_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_tmpdir = tempfile.TemporaryDirectory(prefix="he-seal-", dir=_TMP_ROOT)


def _path() -> str:
    fd, path = tempfile.mkstemp(dir=_tmpdir.name)
    os.close(fd)
    return path


def to_bytes(obj: Any) -> bytes:
    """Serialize a SEAL object (or a seeded SerializableCiphertext) to bytes."""
    path = _path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def load_into(obj: Any, data: bytes, *context: Any) -> Any:
    """Fill `obj` from bytes (SEAL checks them against `context` when given)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SerializationError(f"expected bytes, got {type(data).__name__}")
    path = _path()
    try:
        with open(path, "wb") as f:
            f.write(bytes(data))
        try:
            obj.load(*context, path)
        except (ValueError, RuntimeError) as e:
            raise SerializationError(
                f"cannot load {type(obj).__name__.lstrip('_')}: {e}. The bytes are corrupt or "
                "were made under other CKKS parameters (another key or context)") from None
        return obj
    finally:
        os.unlink(path)
