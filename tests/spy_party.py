"""`confidant party`, plus a record of every payload this process opens (decrypted), in
WORKDIR/spy/NAME.msgpack: the view of a party that plays the adversary. Tests only."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack

from parties import envelope
from parties.party import main


def _spy(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opened_by = envelope.Sealer.open

    def open_and_record(self, data):
        opened = opened_by(self, data)
        with open(path, "ab") as f:
            f.write(msgpack.packb([opened.header.sender, f"{opened.header.protocol}."
                                   f"{opened.header.step}", opened.payload], use_bin_type=True))
        return opened

    envelope.Sealer.open = open_and_record


if __name__ == "__main__":
    argv = sys.argv[1:]
    name, workdir = argv[argv.index("--name") + 1], argv[argv.index("--workdir") + 1]
    _spy(Path(workdir) / "spy" / f"{name}.msgpack")
    main()
