"""Secure computation core: encoding, secret sharing, the Channel, CrypTen glue.

Pure computation: nothing here opens a socket or imports protocols/ or parties/.
"""

from . import additive, encoding, shamir, wire
from .channel import Channel, ChannelError, InMemoryNetwork, PeerGone, PeerTimeout

__all__ = ["additive", "encoding", "shamir", "wire", "Channel", "ChannelError",
           "InMemoryNetwork", "PeerGone", "PeerTimeout"]
