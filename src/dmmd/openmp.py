"""Set OpenMP's wait policy before torch loads (imported first by `dmmd/__init__.py`).

OpenMP threads that spin while waiting make a 2-core machine shared with anything else up to 50x
slower (measured: 5.5 s against 0.12 s per training step). Passive waiting costs nothing when
the machine is idle. OpenMP reads the variable once, when torch loads it: if torch was imported
before dmmd (and the variable was not set), it is too late, and dmmd.runtime.device.thread_guard
runs training and sampling on one thread instead (with a note saying what to set).
"""

import os
import sys

SET_TOO_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
