"""Private inference with CKKS homomorphic encryption (TenSEAL's SEAL bindings).

    plan = he.compile(model, input_shape)      # answering party, its own model
    keys = he.keygen(plan)                     # querying party; keys.public() to share
    enc  = he.encrypt(keys, x)                 # x: [batch, *input_shape]
    out, ap_share = plan.evaluate(enc)         # answering party, public context only
    qp_share = he.decrypt_share(keys, out)     # ring shares: qp_share + ap_share = f(x)
    he.open_shares(qp_share, ap_share)         # f(x) up to CKKS error (owner of both only)

See docs/he.md.
"""

from he.activations import Poly, PolyReLU, PolySiLU, Square
from he.cipher import EncryptedBatch, EncryptedOutput, decrypt, decrypt_share, encrypt, reveal
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
from he.share import open_shares

__all__ = [
    "compile", "keygen", "encrypt", "decrypt", "decrypt_share", "open_shares", "reveal", "Plan", "Keys", "PublicContext",
    "EncryptedBatch", "EncryptedOutput", "Square", "Poly", "PolyReLU", "PolySiLU",
    "HEError", "UnsupportedLayerError", "DepthError", "ContextMismatchError", "ShapeError",
    "MissingKeyError", "PlanMismatchError", "SerializationError",
]
