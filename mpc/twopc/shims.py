"""CrypTen 0.4.1 on current PyTorch: the ONE module that touches CrypTen internals.

* Import shim: CrypTen imports ``torch.onnx._internal.registration``, which
  moved in recent PyTorch; it is aliased before CrypTen is imported.
* Local randomness: CrypTen draws a party's private random values (``PRSS``,
  ``rand``, its own tuple providers) from a per-party ``torch.Generator``, a
  Mersenne Twister whose state its outputs reveal. Those draws come from the OS
  through :mod:`mpc.randomness` instead. The seeded ``prev``/``next``/``global``
  generators stay: with two parties their streams are known to both (pseudo-random
  zero sharings and public coins), so they hide nothing.
* Thread-local CrypTen state: CrypTen keeps a process-global communicator,
  tuple provider, RNG generators and config. All four are routed through a
  thread-local (:data:`local`), so several CrypTen parties can run as threads
  of one process (tests, the in-memory runner) and a 2PC never touches
  another one's state.

Every other module of :mod:`mpc.twopc` imports CrypTen through this one.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading

import numpy as np
import torch

from .. import randomness

_OLD_ONNX = "torch.onnx._internal.registration"
if _OLD_ONNX not in sys.modules:
    try:
        importlib.import_module(_OLD_ONNX)
    except ImportError:
        sys.modules[_OLD_ONNX] = importlib.import_module(
            "torch.onnx._internal.torchscript_exporter.registration")

import crypten  # noqa: E402
import crypten.common.rng as _crypten_rng  # noqa: E402
import crypten.communicator as _crypten_comm  # noqa: E402
import crypten.mpc as _crypten_mpc  # noqa: E402
from crypten.common.util import count_wraps  # noqa: E402
from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor  # noqa: E402
from crypten.mpc.provider.provider import TupleProvider  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402  (CrypTen's config library)

__all__ = ["ArithmeticSharedTensor", "BinarySharedTensor", "Communicator", "MPCTensor",
           "TupleProvider", "count_wraps", "crypten", "local", "new_session_seeds", "random_ring"]

MPCTensor = crypten.mpc.MPCTensor
Communicator = _crypten_comm.Communicator

local = threading.local()


def _current_comm():
    comm = getattr(local, "comm", None)
    if comm is None:
        raise RuntimeError("no CrypTen 2PC is running in this thread; use mpc.twopc.TwoParty")
    return comm


def _current_provider():
    provider = getattr(local, "provider", None)
    if provider is None:
        raise RuntimeError("no CrypTen 2PC is running in this thread; use mpc.twopc.TwoParty")
    return provider


class _ThreadLocalGenerators:
    """Stands in for one of ``crypten.generators``' per-device dicts."""

    def __init__(self, key: str):
        self.key = key

    def _dict(self) -> dict:
        gens = getattr(local, "generators", None)
        if gens is None:
            gens = local.generators = {k: {} for k in ("prev", "next", "local", "global")}
        return gens[self.key]

    def __getitem__(self, device):
        return self._dict()[device]

    def __setitem__(self, device, generator) -> None:
        self._dict()[device] = generator

    def keys(self):
        return self._dict().keys()


_crypten_comm.get = _current_comm
_crypten_comm.is_initialized = lambda: getattr(local, "comm", None) is not None
_crypten_mpc.get_default_provider = _current_provider
for _key in list(crypten.generators):
    crypten.generators[_key] = _ThreadLocalGenerators(_key)


# CrypTen switches its global config inside computations (e.g. argmax runs parts
# with cfg.temp_override({"functions.max_method": "pairwise"})). With two parties
# as threads of one process, one party would see the other's override and run a
# different algorithm, and the 2PC would diverge. Overrides become per thread.
def _cfg_get(self):
    override = getattr(local, "cfg_override", None)
    return override if override is not None else self.__dict__["_confidant_config"]


def _cfg_set(self, value) -> None:
    self.__dict__["_confidant_config"] = value


@contextlib.contextmanager
def _cfg_temp_override(self, override_dict):
    old = getattr(local, "cfg_override", None)
    update = OmegaConf.from_dotlist([f"{k}={v}" for k, v in override_dict.items()])
    local.cfg_override = OmegaConf.merge(self.config, update)
    try:
        yield
    finally:
        local.cfg_override = old


_CfgClass = type(crypten.cfg)
if not isinstance(_CfgClass.__dict__.get("config"), property):
    crypten.cfg.__dict__["_confidant_config"] = crypten.cfg.__dict__.pop("config")
    _CfgClass.config = property(_cfg_get, _cfg_set)
    _CfgClass.temp_override = _cfg_temp_override


_SEEDED = {"generate_random_ring_element": _crypten_rng.generate_random_ring_element,
           "generate_kbit_random_tensor": _crypten_rng.generate_kbit_random_tensor}


def _is_local(generator, kwargs) -> bool:
    gens = getattr(local, "generators", None)
    device = torch.device(kwargs.get("device") or "cpu")
    return generator is None or (gens is not None and generator is gens["local"].get(device))


def random_ring(size) -> torch.Tensor:
    """Uniform elements of Z_2^64 as CrypTen's int64 tensors, from the OS."""
    shape = (size,) if isinstance(size, int) else tuple(size)
    return torch.from_numpy(randomness.ring(shape).view(np.int64))


def _ring_element(size, ring_size=2**64, generator=None, **kwargs):
    """CrypTen's ``generate_random_ring_element``, with private draws from the OS."""
    if not _is_local(generator, kwargs):
        return _SEEDED["generate_random_ring_element"](size, ring_size, generator, **kwargs)
    if ring_size != 2**64:
        raise NotImplementedError("only CrypTen's default ring Z_2^64 is used here")
    return random_ring(size)


def _kbit_tensor(size, bitlength=None, generator=None, **kwargs):
    """CrypTen's ``generate_kbit_random_tensor``, with private draws from the OS."""
    if not _is_local(generator, kwargs):
        return _SEEDED["generate_kbit_random_tensor"](size, bitlength, generator, **kwargs)
    bits = 64 if bitlength is None else bitlength
    values = random_ring(size)
    return values if bits == 64 else values & ((1 << bits) - 1)


# Every CrypTen module that imported the two functions by name gets these.
_OURS = {"generate_random_ring_element": _ring_element,
         "generate_kbit_random_tensor": _kbit_tensor}
for _module in [m for name, m in list(sys.modules.items())
                if name.startswith("crypten") and m is not None]:
    for _name, _original in _SEEDED.items():
        if getattr(_module, _name, None) is _original:
            setattr(_module, _name, _OURS[_name])


def new_session_seeds() -> None:
    """Fresh pairwise-zero-sharing seeds for the 2PC running in this thread,
    exchanged with the peer over its communicator; CrypTen draws them from
    os.urandom (64-bit seeds, expanded by torch's Mersenne Twister: with two parties these
    streams are known to both, so they hide nothing; private draws come from the OS)."""
    crypten._setup_prng()
