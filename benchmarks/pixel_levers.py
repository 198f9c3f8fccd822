"""Training levers for DMMD in Fashion-MNIST pixels, each raced at equal training CPU.

Each lever is the fashion_mnist preset with a few keys changed, trained and scored by
`dmmd compare --methods dmmd` (the same budget in CPU seconds at one thread, the same sampler
candidates chosen on a training subset, FD-fashion on held-out data at NFE 20 and 100, 2000
samples), so every row is comparable with flow matching's row of a `dmmd compare` race on the
same preset (--fm RACE/compare.json, scored at the same budget; its DMMD row is the preset's). Levers run one after another
into OUT/<lever>/ and are skipped when their compare.json exists (the script resumes); the table
is rewritten after each, keeping the rows of levers an earlier invocation raced against the same --fm race.

    python benchmarks/pixel_levers.py --out DIR --fm RACE/compare.json [--levers preset,cheap_step] [--seed 0]

Writes benchmarks/results/levers_fashion_pixel<tag>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LEVERS = {
    "nfe_levels": (["sample.nfe_levels=10"], "sampler only: --nfe 20 as 10 x 2 instead of 20 x 1"),
    "cheap_step": (["train.num_levels=1", "train.gp_every=4", "train.gp_lazy=reuse"],
                   "a cheaper step: one noise level per step and the lazy penalty reused 4 steps"),
    "rbf": (["model.kernel=rbf", "sample.sampler=exact"], "RBF kernel with the learned width sigma(t), exact sampler"),
    "rq": (["model.kernel=rq", "sample.sampler=exact"], "rational-quadratic kernel, exact sampler"),
    "grid_levels": (["train.levels=sampler_grid", "sample.nfe_levels=10"],
                    "training levels drawn from the sampler's 10 levels; --nfe on those levels"),
    "log_snr": (["sample.grid=log_snr"], "sampling levels evenly in log SNR"),
    "gp10": (["train.lambda_gp=10"], "a ten times stronger gradient penalty (WGAN-GP's weight)"),
    "lr5e-4": (["train.lr=5e-4"], "a 2.5x higher learning rate (DMMD makes a fifth of flow matching's steps)"),
    "features256": (["model.feature_dim=256", "model.pixel_features=64"],
                    "twice the features, pixel features included: the linear kernel matches more moments"),
}


def tuned(compare: dict, method: str, point: float | None = None) -> dict:
    point = max(compare["points"]) if point is None else point
    rows = [r for r in compare["rows"] if r["method"] == method and r["budget_point"] == point and r["chosen"]]
    run = next(s for s in compare["runs"][method] if s["point"] == point)
    return {"metrics": {r["nfe"]: r["metric"] for r in rows}, "settings": {r["nfe"]: r["setting"] for r in rows},
            "near_dup": {r["nfe"]: r.get("near_duplicates") for r in rows},
            "cpu_s_per_1000": {r["nfe"]: r["sampling_cpu_s_per_1000"] for r in rows},
            "train_cpu_s": run["train_cpu_s"], "steps": run["step"]}


def rescore(folder: Path, budget: float, num_samples: int) -> None:
    """Score a lever whose training finished (FOLDER/dmmd/checkpoints/final.pt) but whose scoring did
    not (the exact sampler with an RBF kernel lacked its reference rows before commit 'compare: the
    exact sampler ...'), as `dmmd compare` scores it; the steps and the budget come from the run's log."""
    import re

    import torch

    from dmmd.apps.compare import _sample_rows, candidates, selection_rows
    from dmmd.apps.compare_tables import write_tables
    from dmmd.config import to_dict
    from dmmd.data.datasets import load_dataset
    from dmmd.methods.build import build_process, load_model

    torch.set_num_threads(1)
    cfg, model, stats, _ = load_model(folder / "dmmd")
    data = load_dataset(cfg.data, cfg.seed)
    select = selection_rows(data)
    rows, _, _, _ = _sample_rows("dmmd", cfg, model.eval().requires_grad_(False), stats, build_process(cfg.process),
                                 data, (20, 100), num_samples, 0, 1.0, select)
    steps = int(re.findall(r"reached at step (\d+)", (folder / "dmmd" / "log.txt").read_text())[-1])
    for r in rows:
        r.update(train_cpu_s=budget, train_step=steps)
    write_tables(folder, {"data": data.name, "budget_cpu_s": budget, "points": [1.0], "num_samples": num_samples,
                          "nfes": [20, 100], "backbone": to_dict(cfg)["model"], "batch_size": cfg.train.batch_size,
                          "runs": {"dmmd": [{"point": 1.0, "step": steps, "train_cpu_s": budget}]}, "rows": rows,
                          "candidates": {"dmmd": [label for label, _ in candidates("dmmd")]}, "latent": None,
                          "reconstruction_floor": None, "rescored": "scored after training by pixel_levers.rescore"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fm", required=True, help="compare.json of a dmmd,fm race on the preset")
    parser.add_argument("--fm-point", type=float, default=None, help="the race's budget point to read it at")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--budget", type=float, default=900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--tag", default="")
    parser.add_argument("--set", action="append", default=[], dest="extra",
                        help="KEY=VALUE for every lever of this invocation (e.g. sample.calibration_rows=0, the race's "
                             "calibration), shown with the lever's keys")
    parser.add_argument("--note", default="", help="printed under the table")
    args = parser.parse_args(argv)
    out = Path(args.out)
    race = json.loads(Path(args.fm).read_text())
    fm = tuned(race, "fm", args.fm_point)
    rows = [{"lever": "preset", "what": "the fashion_mnist preset as it ships (DMMD of the same race)", "sets": [],
             "command": "(the race)", **tuned(race, "dmmd", args.fm_point)}]
    page = RESULTS / f"levers_fashion_pixel{args.tag}.json"
    earlier = json.loads(page.read_text()) if page.exists() else {}
    if earlier.get("fm_from") == args.fm:  # levers of earlier invocations against the same race stay on the page
        asked = set(args.levers.split(","))
        rows += [r for r in earlier["rows"] if r["lever"] not in asked | {"preset"}]
    for name in args.levers.split(","):
        sets, what = LEVERS[name]
        sets = sets + args.extra
        folder = out / name
        command = ["dmmd", "compare", "--preset", "fashion_mnist", "--methods", "dmmd", "--budget", f"{args.budget:g}",
                   "--points", "1", "--nfe", "20,100", "--num-samples", str(args.num_samples), "--out", str(folder),
                   "--no-progress", "--set", f"seed={args.seed}"] + [a for s in sets for a in ("--set", s)]
        if not (folder / "compare.json").exists() and (folder / "dmmd" / "checkpoints" / "final.pt").exists():
            print("scoring the finished run in", folder, flush=True)
            rescore(folder, args.budget, args.num_samples)
        if not (folder / "compare.json").exists():
            print("running", " ".join(command), flush=True)
            subprocess.run([sys.executable, "-m", "dmmd", *command[1:]], check=True)
        row = {"lever": name, "what": what, "sets": sets, "command": " ".join(command),
               **tuned(json.loads((folder / "compare.json").read_text()), "dmmd")}
        rows.append(row)
        result = {"budget_cpu_s": args.budget, "seed": args.seed, "num_samples": args.num_samples, "fm": fm,
                  "note": args.note,
                  "fm_from": args.fm, "rows": rows,
                  "command": "python benchmarks/pixel_levers.py " + " ".join(sys.argv[1:] if argv is None else argv)}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"levers_fashion_pixel{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"levers_fashion_pixel{args.tag}.md").write_text(markdown(result))
        print(markdown(result), flush=True)
    return 0


def markdown(result: dict) -> str:
    fm = result["fm"]
    lines = ["# DMMD levers in Fashion-MNIST pixels at equal training CPU", "", f"`{result['command']}`", "",
             f"Each lever: the fashion_mnist preset with the keys shown, trained {result['budget_cpu_s']:g} CPU-s at one "
             f"thread (seed {result['seed']}) and scored by `dmmd compare` (tuned sampler of two, chosen on a "
             f"training subset; held-out FD-fashion, {result['num_samples']} samples). Ratio: over flow matching's "
             f"tuned FD-fashion from {result['fm_from']} ({fm['train_cpu_s']:g} CPU-s, {fm['steps']} steps).", "",
             "| lever | keys | steps | NFE 20 | NFE 100 | / fm NFE 20 | / fm NFE 100 | sampling CPU-s / 1000 (NFE 20, 100) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in [{"lever": "flow matching", "sets": [], **fm}] + result["rows"]:
        m = {int(k): v for k, v in r["metrics"].items()}
        f = {int(k): v for k, v in fm["metrics"].items()}
        s = {int(k): v for k, v in r["settings"].items()}
        c = {int(k): v for k, v in r["cpu_s_per_1000"].items()}
        lines.append(f"| {r['lever']} | {', '.join(r['sets']) or '-'} | {r['steps']} | {m[20]:.4g} ({s[20]}) | "
                     f"{m[100]:.4g} ({s[100]}) | {m[20] / f[20]:.2f} | {m[100] / f[100]:.2f} | {c[20]:.2g}, {c[100]:.2g} |")
    return "\n".join(lines + (["", result["note"]] if result.get("note") else [])) + "\n"


if __name__ == "__main__":
    sys.exit(main())
