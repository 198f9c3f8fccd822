import json

import pytest
from test_cli import TINY

from dmmd.apps.compare import METHODS, candidates, dmmd_grid
from dmmd.cli import main


def test_dmmd_grid_spends_the_nfe():
    for nfe in (1, 5, 10, 20, 50, 100, 7):
        levels, steps = dmmd_grid(nfe)
        assert levels * steps == nfe


def test_every_method_tries_the_same_number_of_settings():
    assert len({len(candidates(m)) for m in METHODS}) == 1


def test_compare_is_fair_by_construction(tmp_path):
    """Three methods, equal CPU budgets scored at two points, every candidate at every NFE, the
    tuned row chosen on the training split, tables and pictures written."""
    out = tmp_path / "cmp"
    assert main(["compare", *TINY, "--nfe", "2,4", "--num-samples", "20", "--budget", "1", "--points", "0.5,1",
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "compare.json").read_text())
    rows = result["rows"]
    per_cell = len(candidates("dmmd"))
    assert len(rows) == len(METHODS) * 2 * 2 * per_cell  # methods x points x NFE x settings
    for method in METHODS:
        runs = result["runs"][method]
        assert [r["point"] for r in runs] == [0.5, 1.0]
        assert runs[-1]["train_cpu_s"] >= 1.0 * 0.9 and runs[0]["step"] <= runs[-1]["step"]
        for point in (0.5, 1.0):
            for nfe in (2, 4):
                cell = [r for r in rows if (r["method"], r["budget_point"], r["nfe"]) == (method, point, nfe)]
                assert len(cell) == per_cell and sum(r["chosen"] for r in cell) == 1
                assert cell[0]["default"] and all(r["nfe_used"] <= nfe for r in cell)
                chosen = next(r for r in cell if r["chosen"])
                assert chosen["train_metric"] == min(r["train_metric"] for r in cell)
    text = (out / "compare.md").read_text()
    assert "| fm | tuned |" in text and "| ddpm | default |" in text
    assert (out / "metric_vs_nfe.png").stat().st_size > 1000
    # a second race into the same folder is refused before any compute, nothing overwritten
    assert main(["compare", *TINY, "--budget", "2", "--out", str(out), "--no-progress"]) == 2
    assert json.loads((out / "compare.json").read_text()) == result


@pytest.mark.parametrize("args, message", [(["--nfe", "ten"], "--nfe expects"), (["--points", "0,1"], "--points"),
                                           (["--methods", "gan"], "--methods")])
def test_compare_rejects_bad_options(capsys, args, message):
    assert main(["compare", *args]) == 2
    assert message in capsys.readouterr().err
