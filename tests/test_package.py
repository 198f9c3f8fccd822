"""What `import dmmd` and `dmmd presets` show a user."""

import subprocess
import sys

from dmmd import presets


def test_dir_lists_the_public_api_only():
    code = "import dmmd; print(' '.join(n for n in dir(dmmd) if not n.startswith('__')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["Pipeline", "Trainer", "train"]


def test_preset_summaries_are_whole_sentences():
    for name in presets.names():
        text = presets.summary(name)
        assert text.endswith(".") and text.count("(") == text.count(")"), (name, text)
