"""dmmd: Diffusion MMD gradient flow (Galashov, De Bortoli, Gretton, ICLR 2025).

    import dmmd
    pipe = dmmd.train("eight_gaussians", "runs/g8", overrides={"train.steps": 300})
    x = pipe.sample(1000, seed=0)           # a data-space tensor
    pipe = dmmd.Pipeline.from_run("runs/g8")  # later, from the run folder
"""

import os
import sys

# OpenMP threads that spin while waiting make a 2-core machine shared with anything else up to 50x
# slower (measured: 5.5 s against 0.12 s per training step). Passive waiting costs nothing when
# the machine is idle. OpenMP reads the variable once, when torch loads it: if torch was imported
# before dmmd (and the variable was not set), it is too late, and dmmd.device.thread_guard runs
# training and sampling on one thread instead (with a note saying what to set).
OMP_SET_TOO_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("dmmd")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"

__all__ = ["Pipeline", "Trainer", "train", "__version__"]


def __getattr__(name: str):
    # the API module imports torch: loaded on first use, so `import dmmd` stays cheap and the
    # OpenMP variable above is set before torch loads
    if name in ("Pipeline", "Trainer", "train"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dmmd' has no attribute {name!r}")
