"""What the broker relays during Hash-Comb federated training between processes:
envelopes only, never the Hash-Comb key, seed or shares, never a token the
owners' key decodes, never a float update; and the aggregator's own transcript
shows it received nothing but token histograms."""

import json
import subprocess
import sys
from pathlib import Path

from mpc import wire
from parties.broker import EmbeddedBroker
from parties.envelope import Sealer
from tests.test_capc_e2e import Recorder

ROOT = Path(__file__).resolve().parents[1]


def test_hashcomb_fl_broker_never_sees_a_decodable_value(tmp_path):
    with EmbeddedBroker(allow_anonymous=True) as broker, Recorder(broker.port) as rec:
        cmd = [sys.executable, str(ROOT / "run_parties.py"), "--broker", broker.url,
               "--runs-dir", str(tmp_path), "hashcomb-fl", "--owners", "3", "--rounds", "2",
               "--no-baseline"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    run_dir = Path(out.stdout.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert [x["protocol"] for x in results["sessions"]] == ["hcsetup", "hcfl"]
    assert all(x["audit"]["ok"] for x in results["sessions"])

    inbox = [p for p in rec.payloads if p and Sealer.peek_header(p) is not None]
    assert len(inbox) > 20
    blob = b"\x00".join(rec.payloads)
    for name in ("owner1", "owner2", "owner3"):
        st = wire.decode((run_dir / "state" / f"{name}.state").read_bytes())
        for secret in (st["hashcomb_key"], st["hashcomb_seed"]):
            assert secret not in blob
        for block in st["hashcomb_share"]["blocks"]:
            assert block not in blob
    # every inbox payload is an envelope: its body is ciphertext, not a payload
    for p in inbox:
        _, _, ciphertext, _ = wire.decode(p)
        try:
            body = wire.decode(ciphertext)
        except wire.WireError:
            continue
        assert not isinstance(body, dict), "a plaintext payload crossed the broker"
    # the aggregator received token histograms and public parameters only
    lines = [json.loads(x) for x in (run_dir / "transcripts" / "aggregator.jsonl").read_text().splitlines()]
    steps = {(ln["header"]["protocol"], ln["header"]["step"]) for ln in lines
             if ln.get("event") == "received" and ln["header"]["kind"] == "msg"}
    assert steps and all(p in ("hcsetup", "hcfl") for p, _ in steps)
    assert ("hcsetup", "params") in steps
    assert not {s for p, s in steps if p == "hcsetup"} - {"params"}
