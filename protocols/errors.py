"""Whose fault a failure is: the local user's input, a named peer, or our own code.

A party reports each differently: a :class:`ParameterError` tells the local user
what to change; a :class:`PeerMisbehaved` names the peer (so does a
``mpc.channel.PeerGone`` or ``PeerTimeout`` for a peer that died or went
silent); an :class:`InternalError` is a bug to report.
"""

from __future__ import annotations


class ProtocolError(RuntimeError):
    """A protocol session cannot go on."""


class ParameterError(ProtocolError, ValueError):
    """The local user's parameters or inputs are invalid; the message says what to change."""


class PeerMisbehaved(ProtocolError):
    """A peer sent something the protocol does not allow (malformed, out of order,
    inconsistent): ``peer`` names it."""

    def __init__(self, peer: str, what: str):
        super().__init__(f"party '{peer}' misbehaved: {what}")
        self.peer = peer


class InternalError(ProtocolError):
    """A broken invariant of our own code (a bug), never the user's or a peer's fault."""
