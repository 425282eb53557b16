"""Private inference with CKKS homomorphic encryption (TenSEAL's SEAL bindings).

    plan = he.compile(model, input_shape)      # answering party, its own model
    keys = he.keygen(plan)                     # querying party; keys.public() to share
    enc  = he.encrypt(keys, x)                 # x: [batch, *input_shape]
    out, r = plan.evaluate(enc, mask=True)     # answering party, public context only
    y = he.decrypt(keys, out)                  # = model(x) - r up to CKKS error

See docs/he.md.
"""

from he.activations import Poly, PolyReLU, PolySiLU, Square
from he.cipher import EncryptedBatch, EncryptedOutput, decrypt, encrypt
from he.errors import (
    ContextMismatchError,
    DepthError,
    HEError,
    MissingKeyError,
    PlanMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedLayerError,
)
from he.keys import Keys, PublicContext, keygen
from he.plan import Plan, compile

__all__ = [
    "compile", "keygen", "encrypt", "decrypt", "Plan", "Keys", "PublicContext",
    "EncryptedBatch", "EncryptedOutput", "Square", "Poly", "PolyReLU", "PolySiLU",
    "HEError", "UnsupportedLayerError", "DepthError", "ContextMismatchError", "ShapeError",
    "MissingKeyError", "PlanMismatchError", "SerializationError",
]
