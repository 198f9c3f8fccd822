"""Where a pixel sampler's starting noise ends up: DMMD (FiLM MLP) against flow matching, same draws.

For a DMMD run on the MLP backbone, its first layer's row space (the directions the MLP part of the
witness gradient can move) and the orthogonal complement (only `model.pixel_features` reach it), and:
- the energy (mean squared norm about the mean) of the samples and of held-out data in each;
- how much of the starting noise z0 is carried linearly into the samples: per coordinate, the slope of
  the regression of the sample on its own z0 (0: none of it; 1: all of it), averaged over coordinates.
A flow-matching run (--fm), sampled with Heun from the same z0 (seed 0), gives the slope beside.

    python benchmarks/noise_carry.py --run DMMD_RUN --fm FM_RUN [--nfe 20] [--num-samples 2000]

Writes benchmarks/results/noise_carry_<data>.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.mmd_flow import ParticleNoise
from dmmd.methods.sample import calibrate, needs_calibration, sample, settings_for_nfe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def carried(z: torch.Tensor, z0: torch.Tensor) -> float:
    """Mean over coordinates of the least-squares slope of z on z0 (both (N, d))."""
    zc, nc = z - z.mean(0), z0 - z0.mean(0)
    return float(((zc * nc).mean(0) / nc.var(0, unbiased=False)).mean())


def energy(x: torch.Tensor, basis: torch.Tensor) -> float:
    """Mean squared norm of x's deviation from its mean, within span(basis columns) (orthonormal)."""
    return float(((x - x.mean(0)) @ basis).pow(2).sum(1).mean())


def draw(run: str, nfe: int, num: int) -> tuple:
    cfg, net, stats, payload = load_model(run)
    data = load_dataset(cfg.data, cfg.seed)
    process, shape = build_process(cfg.process), tuple(payload["data_shape"])
    c = copy.deepcopy(cfg)
    settings_for_nfe(c, nfe)
    if c.method == "fm":
        c.sample.sampler = "heun"
    elif needs_calibration(net, c, stats):
        stats = calibrate(net, c, data.train, process, stats, flow_settings(c.sample))
    z = sample(net, c, stats, process, shape, num, 0).flatten(1)
    z0 = ParticleNoise(0, num, shape).prior(process).flatten(1)
    return cfg, net, data, z, z0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a DMMD run on the MLP backbone")
    parser.add_argument("--fm", help="a flow-matching run on the same data")
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg, disc, data, z, z0 = draw(args.run, args.nfe, args.num_samples)
    weight = disc.backbone.inp.weight.detach().double()
    _, _, vh = torch.linalg.svd(weight, full_matrices=True)
    rank = int(torch.linalg.matrix_rank(weight))
    row, comp = vh[:rank].T.float(), vh[rank:].T.float()
    held = data.test[: args.num_samples].flatten(1)
    result = {"data": cfg.data.name, "run": args.run, "fm_run": args.fm, "nfe": args.nfe, "num_samples": args.num_samples,
              "row_dims": rank, "complement_dims": comp.shape[1], "note": args.note,
              "dmmd": {"carried": carried(z, z0), "row_energy": energy(z, row), "complement_energy": energy(z, comp)},
              "held_out": {"row_energy": energy(held, row), "complement_energy": energy(held, comp)},
              "command": "python benchmarks/noise_carry.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if args.fm:
        _, _, _, zf, zf0 = draw(args.fm, args.nfe, args.num_samples)
        result["fm"] = {"carried": carried(zf, zf0), "row_energy": energy(zf, row), "complement_energy": energy(zf, comp)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"noise_carry_{cfg.data.name}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Where the starting noise ends up, {r['data']}", "", f"`{r['command']}`", "",
             *([r["note"], ""] if r.get("note") else []),
             f"NFE {r['nfe']}, {r['num_samples']} samples from the same N(0, I) draws (seed 0). Row space: the "
             f"{r['row_dims']} directions of the DMMD MLP's first layer; complement: the other {r['complement_dims']}. "
             "Energy: mean squared norm about the mean within each. Carried: mean per-coordinate slope of a sample "
             "on its own starting noise.", "",
             "| | carried | row energy | complement energy |", "|---|---|---|---|"]
    for key, label in (("dmmd", "DMMD"), ("fm", "flow matching (Heun)"), ("held_out", "held-out data")):
        if key in r:
            v = r[key]
            carried_text = f"{v['carried']:.3f}" if "carried" in v else "-"
            lines.append(f"| {label} | {carried_text} | {v['row_energy']:.1f} | {v['complement_energy']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
