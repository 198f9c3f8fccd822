import json

import pytest
from test_cli import TINY

from dmmd.apps.compare import METHODS, candidates, dmmd_grid, equal_sampling_cpu, verdict_lines
from dmmd.apps.compare_tables import gap_by_point, write_tables
from dmmd.cli import main


def test_dmmd_grid_spends_the_nfe():
    for nfe in (1, 5, 10, 20, 50, 100, 7):
        levels, steps = dmmd_grid(nfe)
        assert levels * steps == nfe


def test_every_method_tries_the_same_number_of_settings():
    assert len({len(candidates(m)) for m in METHODS}) == 1


def test_compare_is_fair_by_construction(tmp_path, capsys):
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
    # every method at the same CPU points: DMMD's end-of-training calibration is inside its budget (measured
    # and kept back); DMMD trains first and carries the process's one-off start-up (about 1 CPU-s here)
    assert result["runs"]["dmmd"][0]["end_of_training_cpu_s"] > 0 == result["runs"]["fm"][0]["end_of_training_cpu_s"]
    for method in ("ddpm", "fm"):
        for run in result["runs"][method]:
            assert abs(run["train_cpu_s"] - run["point"] * 1.0) <= 0.3, (method, run)
    assert all(r["sampling_cpu_s_per_1000"] > 0 for r in rows)
    assert len(result["verdict"]) == 2 and "At equal sampling CPU" in text
    assert "does the gap narrow with training?" in text and "partial" not in result and "Partial" not in text
    log = (out / "dmmd" / "log.txt").read_text()  # the CPU budget stops training: no step count or ETA to show
    assert "step " in log and "/1000000000" not in log and "ETA" not in log
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-3:-1] == result["verdict"] and printed[-3].startswith("NFE 2: lower ")
    # a second race into the same folder is refused before any compute, nothing overwritten
    assert main(["compare", *TINY, "--budget", "2", "--out", str(out), "--no-progress"]) == 2
    assert json.loads((out / "compare.json").read_text()) == result


@pytest.mark.parametrize("args, message", [(["--nfe", "ten"], "--nfe expects"), (["--points", "0,1"], "--points"),
                                           (["--methods", "gan"], "--methods")])
def test_compare_rejects_bad_options(capsys, args, message):
    assert main(["compare", *args]) == 2
    assert message in capsys.readouterr().err


def _row(method, nfe, metric, cost):
    return {"method": method, "nfe": nfe, "metric": metric, "metric_name": "FD", "budget_point": 1.0,
            "chosen": True, "sampling_cpu_s_per_1000": cost}


def test_verdict_and_equal_sampling_cpu_view():
    rows = [_row("dmmd", 10, 60.0, 4.0), _row("fm", 10, 12.0, 1.0), _row("ddpm", 10, 24.0, 1.0),
            _row("dmmd", 20, 10.0, 8.0), _row("fm", 20, 11.0, 2.0), _row("ddpm", 20, 20.0, 2.0),
            _row("fm", 50, 9.0, 5.0), _row("ddpm", 50, 15.0, 5.0), _row("fm", 100, 8.0, 10.0)]
    result = {"rows": rows, "points": [1.0], "nfes": [10, 20]}
    assert verdict_lines(result) == ["NFE 10: lower FD: fm (12) by 2.00x over ddpm (24); dmmd 60",
                                     "NFE 20: lower FD: dmmd (10) by 1.10x over fm (11); ddpm 20"]
    view = {e["nfe"]: e["others"] for e in equal_sampling_cpu(result)}
    # DMMD NFE 10 costs 4 s: fm's best within it is NFE 20 (2 s); at 8 s fm's NFE 50 (5 s) fits, NFE 100 (10 s) not
    assert view[10]["fm"]["nfe"] == 20 and view[20]["fm"]["nfe"] == 50 and view[20]["ddpm"]["metric"] == 15.0
    cheap = equal_sampling_cpu({**result, "rows": [_row("dmmd", 10, 5.0, 0.5), _row("fm", 10, 6.0, 1.0)]})
    assert cheap[0]["others"]["fm"]["within"] is False  # no fm NFE as cheap: its cheapest, marked


def _point_row(method, point, nfe, metric):
    return {"method": method, "budget_point": point, "nfe": nfe, "metric": metric, "chosen": True, "default": True,
            "metric_name": "FD", "sampling_cpu_s_per_1000": 1.0, "setting": "default", "nfe_used": nfe, "T": "-",
            "Ns": "-", "eta": "-", "train_metric": metric, "cpu_seconds_per_sample": 1e-3}


def test_gap_by_point_and_a_partial_race(tmp_path):
    """DMMD's tuned metric over the best other's at each point; a race cut short (fm scored at the first
    point only) still writes readable tables, marked partial."""
    rows = [_point_row("dmmd", 0.5, 20, 30.0), _point_row("fm", 0.5, 20, 10.0), _point_row("ddpm", 0.5, 20, 20.0),
            _point_row("dmmd", 1.0, 20, 24.0), _point_row("dmmd", 0.5, 100, 9.0), _point_row("fm", 0.5, 100, 12.0)]
    result = {"data": "toy", "budget_cpu_s": 100.0, "points": [0.5, 1.0], "num_samples": 8, "nfes": [20, 100],
              "rows": rows, "candidates": {"dmmd": ["a", "b"], "fm": ["a", "b"]}, "partial": True,
              "runs": {"dmmd": [{"point": 0.5, "train_cpu_s": 50, "step": 5}, {"point": 1.0, "train_cpu_s": 100,
                                                                                 "step": 9}],
                       "fm": [{"point": 0.5, "train_cpu_s": 50, "step": 20}],
                       "ddpm": [{"point": 0.5, "train_cpu_s": 50, "step": 20}]}}
    assert gap_by_point(result) == [(0.5, {20: 3.0, 100: 0.75})]  # no other method reached 100% yet
    written = write_tables(tmp_path, result)
    text = (tmp_path / "compare.md").read_text()
    assert "Partial" in text and "| 50 | 3.00 | 0.75 |" in text and "| fm | tuned | 50 (20) |" in text
    assert json.loads((tmp_path / "compare.json").read_text())["partial"] is True and written["verdict"] == []


def test_compare_races_a_non_linear_kernel(tmp_path):
    """An RBF kernel samples with the exact sampler against reference data (this failed after the
    whole training budget before the reference rows were passed)."""
    out = tmp_path / "rbf"
    assert main(["compare", *TINY, "--set", "model.kernel=rbf", "--set", "sample.sampler=exact", "--set",
                 "sample.num_reference=40", "--methods", "dmmd", "--nfe", "2", "--num-samples", "20", "--budget",
                 "0.5", "--points", "1", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["sampler"] == "exact" and r["metric"] == r["metric"] for r in rows)
