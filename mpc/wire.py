"""The one wire codec: msgpack plus two extension types for arrays.

Payloads may hold None, bool, int, float, str, bytes, lists, tuples (decoded as
lists) and dicts with str keys, numpy arrays and torch tensors. TenSEAL objects
travel as their own serialized bytes. Anything else fails at encode time, so a
payload that could not cross the broker fails in in-memory tests too.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_EXT_NDARRAY = 1
_EXT_TENSOR = 2
# dtypes that cross the wire; object arrays never do (they would need pickle).
_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32",
              "int64", "uint64", "float16", "float32", "float64")
}


class WireError(ValueError):
    """A payload that cannot be encoded, or bytes that are not a valid payload."""


def _pack_array(a: np.ndarray) -> bytes:
    a = a if a.flags.c_contiguous else a.copy(order="C")  # ascontiguousarray would make 0-d arrays 1-d
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if dt.str not in _DTYPES:
        raise WireError(f"arrays of dtype {a.dtype} cannot cross the wire; use one of "
                        f"{sorted(d.name for d in _DTYPES.values())}")
    return msgpack.packb([dt.str, list(a.shape), a.astype(dt, copy=False).tobytes()])


def _unpack_array(data: bytes) -> np.ndarray:
    try:
        dtype_str, shape, raw = msgpack.unpackb(data)
        dtype = _DTYPES[dtype_str]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(int(s) < 0 for s in shape) or count * dtype.itemsize != len(raw):
            raise ValueError("shape does not match data length")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
        raise WireError(f"malformed array in payload: {e}") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return msgpack.ExtType(_EXT_NDARRAY, _pack_array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        return msgpack.ExtType(_EXT_TENSOR, _pack_array(obj.detach().cpu().numpy()))
    raise WireError(f"cannot put a {type(obj).__name__} on the wire; "
                    "send bytes, numbers, str, lists, dicts, numpy arrays or torch tensors")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_NDARRAY:
        return _unpack_array(data)
    if code == _EXT_TENSOR:
        import torch
        return torch.from_numpy(_unpack_array(data))
    raise WireError(f"unknown extension type {code} in payload")


def encode(payload: Any) -> bytes:
    """Serialize a payload to bytes."""
    try:
        return msgpack.packb(payload, default=_default, use_bin_type=True, strict_types=False)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"cannot encode payload: {e}") from None


def decode(data: bytes, max_size: int | None = None) -> Any:
    """Parse bytes produced by :func:`encode`; raise WireError on anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if max_size is not None and len(data) > max_size:
        raise WireError(f"payload of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        return msgpack.unpackb(bytes(data), ext_hook=_ext_hook, raw=False,
                               strict_map_key=True, use_list=True)
    except WireError:
        raise
    except Exception as e:  # msgpack raises a zoo of types on garbage
        raise WireError(f"malformed payload: {type(e).__name__}: {e}") from None
