"""`dmmd sample`'s diversity figures compare with bounded reference subsets: a large data set
costs seconds, not minutes, and every call uses the same rows."""

import torch

from dmmd.data.datasets import Dataset
from dmmd.evaluation import report as rep
from dmmd.evaluation.report import REFERENCE_HELDOUT, REFERENCE_TRAIN, REPORT_STAGES, reference_rows, sample_report


def test_references_are_capped_and_fixed():
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(REFERENCE_TRAIN + 5000, 3, generator=gen),
                   torch.randn(REFERENCE_HELDOUT + 700, 3, generator=gen), "points", "vectors")
    report = sample_report(torch.randn(50, 3, generator=gen), data)
    assert report["n_train_reference"] == REFERENCE_TRAIN and report["n_heldout"] == REFERENCE_HELDOUT
    rows = reference_rows(data.train, REFERENCE_TRAIN)
    assert torch.equal(rows, reference_rows(data.train, REFERENCE_TRAIN)) and len(rows.unique(dim=0)) == REFERENCE_TRAIN
    small = torch.randn(10, 3, generator=gen)
    assert reference_rows(small, REFERENCE_TRAIN) is small
    assert 0.7 < report["nn_to_train_ratio"] < 1.4  # same distribution: no copying signal


def test_held_out_side_is_cached_per_data_and_count(tmp_path, monkeypatch):
    """The second report reads the held-out figures from the cache and equals the first; other data
    or another sample count is another file; a damaged file is recomputed, never trusted."""
    gen = torch.Generator().manual_seed(1)
    data = Dataset(torch.randn(300, 3, generator=gen), torch.randn(200, 3, generator=gen), "points", "vectors")
    z = torch.randn(60, 3, generator=gen)
    first = sample_report(z, data, tmp_path)
    assert len(list(tmp_path.glob("reference-*.pt"))) == 1
    fresh = sample_report(z, data)  # no cache: the same figures
    assert first == fresh
    calls = []
    real = rep.reference_figures
    monkeypatch.setattr(rep, "reference_figures", lambda *a: calls.append(a) or real(*a))
    assert sample_report(z, data, tmp_path) == first and calls == []  # read back
    sample_report(z[:40], data, tmp_path)  # another count: another file
    other = Dataset(data.train + 1, data.test, "points", "vectors")
    sample_report(z, other, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("reference-*.pt"))) == 3
    for path in tmp_path.glob("reference-*.pt"):
        path.write_bytes(b"not a checkpoint")
    assert sample_report(z, data, tmp_path) == first and len(calls) == 3


def test_progress_counts_every_stage():
    class Bar:
        n = 0
        names = []

        def update(self, k):
            self.n += k

        def set_postfix_str(self, s):
            self.names.append(s)

    gen = torch.Generator().manual_seed(2)
    data = Dataset(torch.randn(100, 2, generator=gen), torch.randn(50, 2, generator=gen), "points", "vectors")
    bar = Bar()
    sample_report(torch.randn(20, 2, generator=gen), data, progress=bar)
    assert bar.n == REPORT_STAGES and bar.names[0].startswith("held-out") and "nearest neighbours" in bar.names



def test_training_caches_the_held_out_side_that_sampling_reads(tmp_path, monkeypatch):
    """`dmmd train` leaves the held-out figures of 2000-sample diagnostics in RUN/diagnostics/, and
    `dmmd sample --num-samples 2000` reads them instead of computing them again."""
    from dmmd.cli import main

    run = tmp_path / "run"
    tiny = ["--set", "data.name=eight_gaussians", "--set", "model.width=16", "--set", "model.depth=1",
            "--set", "model.feature_dim=8", "--set", "model.time_dim=8", "--set", "train.steps=5",
            "--set", "train.batch_size=16", "--set", "sample.num_levels=2", "--set", "sample.steps_per_level=1",
            "--set", "sample.replay_particles=50", "--set", "train.threads=1"]
    assert main(["train", *tiny, "--out", str(run), "--no-progress"]) == 0
    assert len(list((run / "diagnostics").glob("reference-*.pt"))) == 1
    monkeypatch.setattr(rep, "reference_figures", lambda *a: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "2000", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
