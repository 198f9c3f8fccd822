import json

from dmmd.cli import main
from dmmd.compare import dmmd_grid, tuning_grid
from test_cli import TINY


def test_dmmd_grid_spends_the_nfe():
    for nfe in (1, 5, 10, 20, 50, 100, 7):
        levels, steps = dmmd_grid(nfe)
        assert levels * steps == nfe


def test_compare_writes_table_plot_and_pictures(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--nfe", "2,4", "--num-samples", "20", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "compare.json").read_text())
    keys = {(r["model"], r["sampler"], r["nfe"]) for r in result["rows"]}
    assert keys == {("dmmd", "approx", 2), ("dmmd", "approx", 4), ("ddpm", "ddpm", 2), ("ddpm", "ddpm", 4),
                    ("ddpm", "ddim", 2), ("ddpm", "ddim", 4), ("dmmd tuned", "approx", 2), ("dmmd tuned", "approx", 4)}
    assert len(result["ablations"]) == 7 and result["budget"]["steps"] == {"dmmd": 12, "ddpm": 12}
    # the tuned row is the tuning grid's best on the training split, then scored on held-out data
    for nfe, tuned in result["tuning"]["per_nfe"].items():
        trials = tuned["trials"]
        assert len(trials) == len(tuning_grid(int(nfe), 0.0))  # TINY keeps the default sample.renoise = 0
        best = min(trials, key=lambda t: t["train_metric"])
        assert tuned["chosen"] == {k: v for k, v in best.items() if k != "train_metric"}
        row = next(r for r in result["rows"] if r["model"] == "dmmd tuned" and r["nfe"] == int(nfe))
        assert (row["T"], row["Ns"], row["eta"]) == (best["num_levels"], best["steps_per_level"], best["step_size"])
    assert "| dmmd |" in (out / "compare.md").read_text()
    for name in ("metric_vs_nfe.png", "scatter_dmmd.png", "scatter_ddpm.png"):
        assert (out / name).stat().st_size > 1000


def test_compare_rejects_bad_nfe(capsys):
    assert main(["compare", "--nfe", "ten"]) == 2
    assert "--nfe expects" in capsys.readouterr().err


def test_tuning_grid_spends_the_nfe():
    for nfe in (1, 10, 20, 50, 100):
        grid = tuning_grid(nfe, 0.3)
        assert grid and all(g["num_levels"] * g["steps_per_level"] == nfe for g in grid)
        travel = {round(g["step_size"] * g["steps_per_level"], 9) for g in grid}
        assert travel == {0.5, 1.0, 1.5, 2.0} and {g["renoise"] for g in grid} == {0.1, 0.3}


def test_compare_time_budget(tmp_path):
    """--budget time: DDPM trains for DMMD's wall-clock; its (cheaper) steps outnumber DMMD's."""
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--nfe", "2", "--num-samples", "20", "--out", str(out), "--no-progress",
                 "--budget", "time", "--no-tune"]) == 0
    result = json.loads((out / "compare.json").read_text())
    b = result["budget"]
    assert b["kind"] == "time" and b["steps"]["dmmd"] == 12 and b["steps"]["ddpm"] > 12
    assert result["train_seconds"]["ddpm"] < result["train_seconds"]["dmmd"] + 10
    assert not any(r["model"] == "dmmd tuned" for r in result["rows"])
