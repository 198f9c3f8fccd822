"""dmmd: Diffusion MMD gradient flow (Galashov, De Bortoli, Gretton, ICLR 2025).

    import dmmd
    pipe = dmmd.train("eight_gaussians", "runs/g8", overrides={"train.steps": 300})
    x = pipe.sample(1000, seed=0)           # a data-space tensor
    pipe = dmmd.Pipeline.from_run("runs/g8")  # later, from the run folder
"""

from dmmd import openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before anything loads torch)
from dmmd.version import __version__

__all__ = ["Pipeline", "Trainer", "train", "__version__"]


def __getattr__(name: str):
    # the API module imports torch: loaded on first use, so `import dmmd` stays cheap and the
    # OpenMP variable above is set before torch loads
    if name in ("Pipeline", "Trainer", "train"):
        from dmmd.apps import pipeline as api

        return getattr(api, name)
    raise AttributeError(f"module 'dmmd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return ["Pipeline", "Trainer", "train", "__version__"]
