"""`make demo`: train DMMD on the embedded digits, sample 100 digits, print where the grid is.

Runs the same commands a user would type (`dmmd train --preset digits`, `dmmd sample`) into
runs/demo. Redirected to a file, the output is a few kilobytes: progress bars are drawn on a
terminal only, and training prints one line per logging interval otherwise.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from dmmd.cli import main as cli_main

RUN = Path("runs/demo")


def main() -> int:
    started = time.time()
    if RUN.exists():
        shutil.rmtree(RUN)
    # one thread: deterministic training, and faster for this small MLP (2000 steps at N_n = 2: 103 s against
    # 143-158 s with two threads on a 2-core machine, 2026-12-01)
    rc = cli_main(["train", "--preset", "digits", "--out", str(RUN), "--set", "train.threads=1"])
    if rc:
        return rc
    out = RUN / "samples"
    rc = cli_main(["sample", "--checkpoint", str(RUN), "--sampler", "approx", "--num-samples", "100",
                   "--seed", "0", "--out", str(out)])
    if rc:
        return rc
    report = json.loads((out / "diversity.json").read_text())
    div = report.get("diversity", {})
    classes = div.get("classes", {})
    print("\n== demo summary ==")
    print(f"sampler: approx ({report['settings']['reading']} reading), NFE {report['nfe']}, {report['seconds']} s")
    if classes:
        print(f"classifier confidence {classes['confidence']:.2f} (held-out digits {classes['confidence_heldout']:.2f}); "
              f"class shares {classes['min_class_share']:.0%}-{classes['max_class_share']:.0%}")
    if div:
        print(f"near-duplicates {div['near_duplicate_share']:.1%}; distance to nearest training digit "
              f"{div['nn_to_train_ratio']:.2f} x that of held-out digits")
    print(f"total {time.time() - started:.0f} s")
    print(f"sample grid: {(out / 'samples.png').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
