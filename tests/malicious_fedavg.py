"""fedavg whose server tries to swap the clients' mask keys: before its first round it
sends every client a `fedavg.keys` message carrying its own X25519 key, with its own
conformance check switched off (a modified server would skip it). Loaded through
$CONFIDANT_PROTOCOLS by tests/test_fedavg_processes.py."""

from protocols import fedavg
from protocols.fedavg import NAME, RULES, Params  # noqa: F401 (the protocol's interface)


async def key_swapping_server(ctx):
    ctx.channel.conformance = None
    pk = fedavg.secagg.public_bytes(fedavg.secagg.new_key())
    context = f"{ctx.channel.session}/0".encode()
    for name in ctx.with_role("client"):
        await ctx.channel.send(name, f"{NAME}.keys", {"context": context, "pk": pk})
    return await fedavg.server(ctx)


ROLES = {"client": fedavg.client, "server": key_swapping_server}
