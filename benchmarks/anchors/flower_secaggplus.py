"""Flower's SecAgg+ primitives timed on one round's work (run by .venv-flower's python:
``make bench`` installs flwr there). Prints one JSON object.

    .venv-flower/bin/python benchmarks/anchors/flower_secaggplus.py N D DEGREE T DROPPED

The client's round as flwr's secaggplus_mod does it: two ECDH (SECP384R1) key pairs,
Shamir shares of its secret key and of its self-mask seed for every neighbour, the shares
Fernet-encrypted per neighbour, then the self mask and one pairwise mask per neighbour
from ``pseudo_rand_gen`` (numpy's Mersenne Twister seeded with 32 bits). The server's
unmasking as secaggplus_workflow does it: ``combine_shares`` per seed, then the masks.
Only flwr's own functions are timed; the glue between them is here.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

MODULUS = 1 << 32          # SecAggPlusWorkflow's default modulus_range


def _best(fn, repeat: int = 2) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    n, d, degree, t, dropped = map(int, sys.argv[1:6])
    dims = [(d,)]
    peers = [ec.generate_private_key(ec.SECP384R1()).public_key() for _ in range(degree)]

    def client() -> None:
        sk1 = ec.generate_private_key(ec.SECP384R1())
        sk2 = ec.generate_private_key(ec.SECP384R1())
        sk1_bytes = sk1.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        rd_seed = os.urandom(32)
        b_shares = create_shares(rd_seed, t, degree + 1)
        s_shares = create_shares(sk1_bytes, t, degree + 1)
        for i, pk in enumerate(peers):
            key = generate_shared_key(sk2, pk)
            encrypt(key, b_shares[i] + s_shares[i])
        y = pseudo_rand_gen(rd_seed, MODULUS, dims)[0]
        for pk in peers:
            seed = generate_shared_key(sk1, pk)
            m = pseudo_rand_gen(seed, MODULUS, dims)[0]
            y += m
        y %= MODULUS

    survivors = n - dropped
    toward = min(degree, survivors)          # survivors that masked toward each dropped client
    seed_shares = create_shares(os.urandom(32), t, degree + 1)[:t]
    pem = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_shares = create_shares(pem, t, degree + 1)[:t]

    def server() -> None:
        total = np.zeros(d, dtype=np.int64)
        for _ in range(survivors):            # self masks
            seed = combine_shares(seed_shares)
            total -= pseudo_rand_gen(seed, MODULUS, dims)[0]
        for _ in range(dropped):              # the dropped clients' pairwise masks
            sk = serialization.load_pem_private_key(combine_shares(key_shares), None)
            for pk in peers[:toward]:
                total += pseudo_rand_gen(generate_shared_key(sk, pk), MODULUS, dims)[0]
        total %= MODULUS

    t0 = time.perf_counter()
    combine_shares(seed_shares)
    combine_s = time.perf_counter() - t0

    print(json.dumps({"client_s": _best(client), "server_s": _best(server, 1), "combine_seed_s": combine_s,
                      "upload_bytes": 8 * d,     # flwr sends int64 arrays
                      "seed_bits": 32, "prg": "numpy MT19937 (RandomState)"}))


if __name__ == "__main__":
    main()
