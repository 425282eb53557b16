"""`python -m benchmarks` (what `make bench` runs): every benchmarks/bench_*.py in turn.

A benchmark that fails is reported and the others still run; the exit code is
non-zero if any failed. Run one alone with `python -m benchmarks.bench_NAME`.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def main() -> int:
    names = sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    failed = []
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        start = time.perf_counter()
        try:
            code = importlib.import_module(f"benchmarks.{name}").main()
            if isinstance(code, int) and code != 0:
                print(f"benchmarks.{name}.main() returned {code}")
                failed.append(name)
        except SystemExit as e:  # a main() that exits: only a non-zero code is a failure
            if e.code not in (0, None):
                print(f"benchmarks.{name} exited with {e.code!r}")
                failed.append(name)
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {'FAILED' if name in failed else 'done'} in "
              f"{time.perf_counter() - start:.0f} s ===", flush=True)
    print(f"\n{len(names) - len(failed)} of {len(names)} benchmarks ran"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
