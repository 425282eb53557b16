"""Two-party computation with CrypTen, over a :class:`mpc.channel.Channel`.

One job per module: :mod:`.shims` (the only code touching CrypTen internals),
:mod:`.communicator` (CrypTen's messages over a Channel), :mod:`.dealer`
(correlated randomness from a third party), :mod:`.provider` (CrypTen's side of
the dealer), :mod:`.inbox` (concurrent sessions' messages told apart by tag), :mod:`.session` (a 2PC between two named parties),
:mod:`.rehearsal` (a 2PC's dealer plan learnt locally, before the first real run).
"""

from .communicator import TwoPartyError
from .dealer import Dealer, serve_dealer
from .rehearsal import rehearse
from .session import TwoParty, argmax_onehot, onehot_argmax_share, share_of, tensor_from_shares

__all__ = ["Dealer", "TwoParty", "TwoPartyError", "argmax_onehot",
           "onehot_argmax_share", "rehearse", "serve_dealer", "share_of", "tensor_from_shares"]
