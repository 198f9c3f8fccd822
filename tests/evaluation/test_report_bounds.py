"""`dmmd sample`'s diversity figures compare with bounded reference subsets: a large data set
costs seconds, not minutes, and every call uses the same rows."""

import torch

from dmmd.data.datasets import Dataset
from dmmd.evaluation.report import REFERENCE_HELDOUT, REFERENCE_TRAIN, reference_rows, sample_report


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
