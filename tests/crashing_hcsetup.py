"""hcsetup whose party named in $CONFIDANT_TEST_CRASH crashes mid-protocol (tests/crashing.py)."""

from protocols import hcsetup
from protocols.hcsetup import NAME, RULES, Params  # noqa: F401 (the protocol's interface)
from tests.crashing import crashing_roles

ROLES = crashing_roles(hcsetup)
