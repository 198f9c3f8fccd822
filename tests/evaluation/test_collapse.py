"""The collapse warning `dmmd sample` prints: which figure says so, and the likely cause."""

from dmmd.evaluation.report import (
    CLASS_SHARE_WARN,
    MODE_SHARE_WARN,
    NEAR_DUPLICATE_WARN,
    SAFE_GUIDANCE,
    SPREAD_WARN,
    collapse_figure,
    collapse_warning,
)

HEALTHY = {"near_duplicate_share": 0.0, "near_duplicate_share_heldout": 0.0, "median_nn_samples_equal_size": 0.9,
           "median_nn_heldout_equal_size": 1.0,
           "classes": {"max_class_share": 0.14, "min_class_share": 0.07}}


def test_healthy_samples_do_not_warn():
    assert collapse_warning(HEALTHY, "dmmd", 100, guidance=0.5) is None
    modes = {"near_duplicate_share": 0.01, "modes": {"mode_shares": [0.125] * 8}}
    assert collapse_figure(modes) is None


def test_near_copies_warn_and_name_strong_guidance():
    copies = {**HEALTHY, "near_duplicate_share": 1.0}
    line = collapse_warning(copies, "dmmd", 100, guidance=2.0, one_class=True)
    assert line.startswith("warning: the samples look collapsed: 100% of the samples have a near-copy")
    assert f"guidance too strong (--guidance 2; measured safe for dmmd up to {SAFE_GUIDANCE['dmmd']:g})" in line


def test_thresholds_are_where_they_say():
    just_below = {**HEALTHY, "near_duplicate_share": NEAR_DUPLICATE_WARN - 0.01}
    assert collapse_figure(just_below) is None
    assert collapse_figure({**HEALTHY, "near_duplicate_share": NEAR_DUPLICATE_WARN}) is not None
    dense = {**HEALTHY, "near_duplicate_share": 0.3, "near_duplicate_share_heldout": 0.2}  # the data itself is dense
    assert collapse_figure(dense) is None


def test_one_class_warns_unless_one_class_was_asked_for():
    lopsided = {**HEALTHY, "classes": {"max_class_share": CLASS_SHARE_WARN}}
    assert "one class holds 50%" in collapse_figure(lopsided)
    assert collapse_figure(lopsided, one_class=True) is None


def test_a_lost_mode_warns_with_the_cause_by_steps():
    lost = {"near_duplicate_share": 0.0, "modes": {"mode_shares": [MODE_SHARE_WARN / 2] + [0.14] * 7}}
    assert "too few steps (NFE 10" in collapse_warning(lost, "dmmd", 10)
    assert "sample.step_size" in collapse_warning(lost, "dmmd", 100)
    assert "sample.step_size" in collapse_warning(lost, "fm", 100, guidance=SAFE_GUIDANCE["fm"])


def test_bunched_samples_warn():
    bunched = {**HEALTHY, "median_nn_samples_equal_size": SPREAD_WARN * 0.9}
    assert "bunch together (median distance to the nearest other sample 0.45 x" in collapse_figure(bunched)
    assert collapse_figure({**HEALTHY, "median_nn_samples_equal_size": SPREAD_WARN * 1.1}) is None
