"""Every fenced snippet in README.md and docs/*.md runs as written, with small step counts.

A document's snippets run in order in one fresh folder (later ones use the runs of earlier ones):
```python blocks as a script (a fresh namespace, in this process), and the `dmmd ...` lines of other blocks
through the CLI with small sizes (`train.steps` numbers are lowered to SMALL_STEPS, and a few
options get small values; a new run's MLP is narrow). Lines that need what a test machine does not have are skipped with the
reason in SKIP; blocks without a command line (formulas) are not commands.
"""

import re
import runpy
import shlex
from pathlib import Path

import numpy as np
import pytest

from dmmd.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SMALL_STEPS = 20
COMMANDS = ("dmmd ", "make ", "torchrun ", "python ")

SKIP = {  # pattern in the line -> why it is not run here
    r"^make ": "make sets up .venv and runs the demo or this suite itself",
    r"^torchrun ": "several processes: tests/test_distributed.py covers data-parallel training",
    r"data\.root=/data/|cifar10": "needs a local copy of an image data set",
    r"--inception-weights": "needs the Inception weights file (docs/metrics.md; nothing is downloaded)",
    r"\b(RUN|PATH|HOST0)\b|\.\.\.": "a placeholder, not a command",
    r"train\.device=cuda": "needs a CUDA device",
}

# small sizes appended to a subcommand (argparse keeps the last value of an option)
SMALL = {
    "sample": ["--num-samples", "100"],
    "compare": ["--budget", "1", "--nfe", "10", "--num-samples", "20", "--points", "1", "--methods", "dmmd"],
    "train-autoencoder": ["--set", f"autoencoder.steps={SMALL_STEPS}"],
}
SMALL_SAMPLE_SETTINGS = ["--set", "sample.replay_particles=50"]  # train and calibrate: a small replay
# a new training run (not a resume: its network is the checkpoint's): a narrow MLP (unet presets
# ignore it), so that calibration over a full image data set (60000 Fashion-MNIST latents) is cheap
SMALL_MODEL = ["--set", "model.width=32"]
# the same small sizes for the Python snippets' dmmd.train(..., overrides={...}) of a new run
SMALL_OVERRIDES = {"model.width": 32, "data.num_points": 2000, "sample.replay_particles": 50}


def small_steps(text: str) -> str:
    """train.steps=N, "train.steps": N and train.steps = N lowered to SMALL_STEPS (N > SMALL_STEPS)."""
    def lower(m):
        return m.group(1) + str(min(int(m.group(2)), SMALL_STEPS))

    return re.sub(r"(train\.steps[\"']?\s*[=:]\s*)(\d+)", lower, text)


def small_python(text: str) -> str:
    """small_steps, and SMALL_OVERRIDES first in each `overrides={` of a line without resume=True
    (the snippet's own keys come after them and win)."""
    extra = "".join(f"{k!r}: {v!r}, " for k, v in SMALL_OVERRIDES.items())
    lines = [line if "resume=True" in line else line.replace("overrides={", "overrides={" + extra)
             for line in small_steps(text).splitlines()]
    return "\n".join(lines)


def blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line number, language, text) of each fenced block."""
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((start, m.group(1), "\n".join(body)))
        i += 1
    return out


def command_lines(text: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments (#) dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line.startswith(COMMANDS):
            commands.append(line)
    return commands


def skip_reason(line: str) -> str | None:
    return next((why for pattern, why in SKIP.items() if re.search(pattern, line)), None)


def test_snippet_parsing():
    text = "dmmd train --set train.steps=3000 \\\n    --out r   # comment\n# a note\nf(z) = c\nmake test"
    assert command_lines(text) == ["dmmd train --set train.steps=3000 --out r", "make test"]
    assert small_steps('x = {"train.steps": 500}; --set train.steps=3000; steps = 7; train.steps=5') == \
        'x = {"train.steps": 20}; --set train.steps=20; steps = 7; train.steps=5'
    assert small_python('p = dmmd.train("g", "r", overrides={"train.steps": 500})\nq = f(overrides={}, resume=True)') \
        == 'p = dmmd.train("g", "r", overrides={' + "".join(f"{k!r}: {v!r}, " for k, v in SMALL_OVERRIDES.items()) + \
        '"train.steps": 20})\nq = f(overrides={}, resume=True)'
    assert skip_reason("make demo") and skip_reason("dmmd evaluate --samples RUN/x.npz") and \
        not skip_reason("dmmd train --preset digits")


def _run_dmmd(line: str) -> None:
    argv = shlex.split(small_steps(line))[1:]
    command = argv[0]
    if command == "train" and "--dry-run" not in argv:  # presets train for thousands of steps
        argv += ["--set", f"train.steps={2 * SMALL_STEPS if '--resume' in argv else SMALL_STEPS}"]
        if "--resume" not in argv:
            argv += ["--set", "data.num_points=2000", *SMALL_MODEL]  # toys: 2000 training points (others ignore it)
    if command in ("train", "calibrate") and "--dry-run" not in argv:
        argv += SMALL_SAMPLE_SETTINGS
    argv += SMALL.get(command, [])
    if command in ("train", "sample", "calibrate", "compare"):
        argv.append("--no-progress")
    assert main(argv) == 0, f"failed as written: {line}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_snippets_of_a_document_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # snippets that name configs/ files
    # the README's own-data line: an (N, 3) array "x"
    np.savez(tmp_path / "my_vectors.npz", x=np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    ran, skipped = 0, []
    for line_no, language, text in blocks(doc):
        where = f"{doc.name}:{line_no}"
        if language == "python":
            script = tmp_path / f"snippet_{line_no}.py"
            script.write_text(small_python(text))
            # in this process (a new interpreter per block cost about 3 CPU-s of imports each): a fresh
            # namespace, run as a script from the document's folder
            runpy.run_path(str(script), run_name="__main__")
            ran += 1
            continue
        for line in command_lines(text):
            reason = skip_reason(line)
            if reason:
                skipped.append(f"{where}: {line[:60]} ({reason})")
            elif line.startswith("dmmd "):
                _run_dmmd(line)
                ran += 1
            else:
                skipped.append(f"{where}: {line[:60]} (not a dmmd command)")
    if not ran:
        pytest.skip(f"no runnable snippet in {doc.name}" + "".join(f"; {entry}" for entry in skipped))
