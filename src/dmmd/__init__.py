"""dmmd: Diffusion MMD gradient flow (Galashov, De Bortoli, Gretton, ICLR 2025)."""

__version__ = "0.1.0"
