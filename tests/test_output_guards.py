"""An output path never replaces a file the user or a run needs: a checkpoint, anything in a run's
checkpoints/ folder, the command's own input, an existing data or samples file."""

import hashlib

import pytest

from dmmd.cli import main
from test_cli import TINY


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("guards")
    assert main(["train", *TINY, "--out", str(root / "run"), "--no-progress"]) == 0
    assert main(["sample", "--checkpoint", str(root / "run"), "--num-samples", "20", "--out", str(root / "s"),
                 "--no-progress", "--no-diagnostics"]) == 0
    return root


def _sum(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


CASES = {
    "evaluate onto the final checkpoint": (["evaluate", "--samples", "{s}/samples.npz", "--checkpoint", "{run}",
                                            "--out", "{run}/checkpoints/final.pt"], "checkpoints/ folder"),
    "evaluate onto its samples file": (["evaluate", "--samples", "{s}/samples.npz", "--checkpoint", "{run}",
                                        "--out", "{s}/samples.npz"], "also an input"),
    "evaluate onto a new file in checkpoints/": (["evaluate", "--samples", "{s}/samples.npz", "--checkpoint", "{run}",
                                                  "--out", "{run}/checkpoints/scores.json"], "checkpoints/ folder"),
    "evaluate onto the run's config": (["evaluate", "--samples", "{s}/samples.npz", "--checkpoint", "{run}",
                                        "--out", "{run}/config.json"], "does not overwrite"),
    "plot onto the final checkpoint": (["plot", "{run}", "--out", "{run}/checkpoints/final.pt"], "checkpoints/ folder"),
    "plot onto the metrics it reads": (["plot", "{run}", "--out", "{run}/metrics.jsonl"], "also an input"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refused_and_nothing_changed(made, capsys, name):
    argv, message = CASES[name]
    files = sorted(p for p in made.rglob("*") if p.is_file())
    before = {p: _sum(p) for p in files}
    capsys.readouterr()
    assert main([a.format(run=made / "run", s=made / "s") for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p for p in made.rglob("*") if p.is_file()) == files
    assert {p: _sum(p) for p in files} == before


def test_the_run_still_samples_afterwards(made, tmp_path):
    main(["evaluate", "--samples", str(made / "s" / "samples.npz"), "--checkpoint", str(made / "run"),
          "--out", str(made / "run" / "checkpoints" / "final.pt")])
    assert main(["sample", "--checkpoint", str(made / "run"), "--num-samples", "5", "--out", str(tmp_path / "again"),
                 "--no-progress", "--no-diagnostics"]) == 0


def test_a_fresh_report_and_a_rerun_are_written(made, tmp_path, capsys):
    out = tmp_path / "scores.json"
    for _ in range(2):  # an evaluate report of its own is replaced by the next one
        assert main(["evaluate", "--samples", str(made / "s" / "samples.npz"), "--checkpoint", str(made / "run"),
                     "--metrics", "fd", "--out", str(out)]) == 0
    assert out.is_file()


def test_train_refuses_a_folder_of_the_users_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "log.txt").write_text("my notes\n")
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    before = {p.name: _sum(p) for p in folder.iterdir()}
    assert main(["train", *TINY, "--out", str(folder), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holding files that are not a dmmd run (log.txt, metrics.jsonl)" in err
    assert {p.name: _sum(p) for p in folder.iterdir()} == before


def test_calibrate_keeps_files_it_did_not_write(made, tmp_path):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    stats = run / "checkpoints" / "stats"
    stats.mkdir(exist_ok=True)
    torch.save({"mine": torch.ones(2)}, stats / "my_stats.pt")
    before = _sum(stats / "my_stats.pt")
    assert main(["calibrate", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--set", "sample.num_levels=4",
                 "--no-progress"]) == 0
    assert _sum(stats / "my_stats.pt") == before


@pytest.mark.parametrize("command", ["sample", "calibrate", "resume"])
def test_a_symlinked_lock_is_refused_and_its_target_kept(made, tmp_path, capsys, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (run / ".lock").symlink_to(target)
    argv = {"sample": ["sample", "--checkpoint", str(run), "--num-samples", "5", "--out", str(run / "s"),
                       "--no-progress"],
            "calibrate": ["calibrate", "--checkpoint", str(run), "--set", "sample.num_levels=4", "--no-progress"],
            "resume": ["train", "--resume", str(run), "--set", "train.steps=14", "--no-progress"]}[command]
    if command == "sample":  # sample locks its output with .OUT.lock beside it
        (run / ".lock").unlink()
        (run / ".s.lock").symlink_to(target)
    capsys.readouterr()
    assert main(argv) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert target.read_text() == "keep me\n"


def test_a_fifo_lock_is_a_clean_error(made, tmp_path, capsys):
    import os
    import shutil

    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    os.mkfifo(run / ".lock")
    assert main(["calibrate", "--checkpoint", str(run), "--set", "sample.num_levels=4", "--no-progress"]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_symlinked_log_is_refused_and_its_target_kept(made, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(made / "run", run)
    target = tmp_path / "diary.txt"
    target.write_text("mine\n")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(target)
    assert main(["train", "--resume", str(run), "--set", "train.steps=14", "--no-progress"]) == 2
    assert "log.txt is a symbolic link" in capsys.readouterr().err
    assert target.read_text() == "mine\n"
