import json

from dmmd.cli import main
from dmmd.compare import dmmd_grid
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
                    ("ddpm", "ddim", 2), ("ddpm", "ddim", 4)}
    assert len(result["ablations"]) == 7 and result["budget"]["steps"] == 12
    assert "| dmmd |" in (out / "compare.md").read_text()
    for name in ("metric_vs_nfe.png", "scatter_dmmd.png", "scatter_ddpm.png"):
        assert (out / name).stat().st_size > 1000


def test_compare_rejects_bad_nfe(capsys):
    assert main(["compare", "--nfe", "ten"]) == 2
    assert "--nfe expects" in capsys.readouterr().err
