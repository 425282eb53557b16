"""The protocols: role code only, as async role functions over a
:class:`mpc.channel.Channel` (one module per protocol), their typed parameters,
the registry and the in-process runner (:mod:`protocols.runner`).

Nothing here opens a file or a socket, sets process-wide state or imports
``parties``; what a role needs from files is handed in (:class:`Resources`).
"""

from .context import Resources, RoleContext, RoleFn, RoleResult
from .errors import InternalError, ParameterError, PeerMisbehaved, ProtocolError
from .params import Params
from .registry import check_params, conformance_rules, load, protocols, role_function, rules

__all__ = ["InternalError", "ParameterError", "Params", "PeerMisbehaved", "ProtocolError",
           "Resources", "RoleContext", "RoleFn", "RoleResult", "check_params",
           "conformance_rules", "load", "protocols", "role_function", "rules"]
