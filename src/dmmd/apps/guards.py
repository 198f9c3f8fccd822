"""What the Python API checks before any work, as the command line does.

- Arguments: each of a wrong type or value is a one-line ConfigError naming it (`n`, `nfe`,
  `seed`, `config`, `out`, ...); integers may be Python or NumPy integers, never bools.
- Outputs: the run-folder and output-path rules of dmmd.runtime.runfolder, with its locks:
  `output_file` / `output_folder` check a destination (never a checkpoint, samples, config or log
  file, nothing inside a run's checkpoints/), make missing parent folders, and hold the lock beside
  the destination that `dmmd sample --out` and the other writers of that path take.
- Samples holding NaN or Inf: counted (`nonfinite`), and a RuntimeWarning with the count.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import typing
import warnings
from pathlib import Path

import torch
from torch import Tensor

from dmmd.config import Config, ConfigError
from dmmd.runtime.runfolder import check_output_dir, check_output_file, hold

API = "dmmd Python API"  # how a lock the API holds names its holder (with the pid)
Overrides = typing.Union[typing.Mapping[str, object], typing.Sequence[str]]


def _got(value) -> str:
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"


def integer(name: str, value, minimum: int | None = None) -> int:
    """`value` as an int: a Python or NumPy integer (not a bool, a float or a string), >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def flag(name: str, value, optional: bool = False) -> bool | None:
    """True or False (or None when optional); 1, 'yes' and the like are refused."""
    if (value is None and optional) or isinstance(value, bool):
        return value
    raise ConfigError(f"{name} must be True or False{' or None' if optional else ''}, got {_got(value)}")


def text(name: str, value, optional: bool = True) -> str | None:
    if (value is None and optional) or isinstance(value, str):
        return value
    raise ConfigError(f"{name} must be a string{' or None' if optional else ''}, got {_got(value)}")


def real(name: str, value, optional: bool = True) -> float | None:
    """A real number (int or float, not a bool), or None when optional."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number{' or None' if optional else ''}, got {_got(value)}")
    return float(value)


def path(name: str, value) -> Path:
    """A str or os.PathLike naming a file or folder (not empty, no NUL byte)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a path (str or pathlib.Path), got {_got(value)}")
    if not value or "\0" in value:
        raise ConfigError(f"{name} must name a file or folder, got {value!r}")
    return Path(value)


def config_source(config) -> Config | str | Path | None:
    """What load_config takes: a Config, a preset name or config file (str or Path), or None."""
    if config is None or isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        checked = path("config", config)
        return config if isinstance(config, str) else checked
    raise ConfigError(f"config must be a dmmd.config.Config, a preset name, a TOML/JSON file path or None, got "
                      f"{_got(config)}")


def override_list(overrides: Overrides | None) -> list[str]:
    """`key=value` strings from a dict {'train.steps': 300} or a list ['train.steps=300']."""
    if overrides is None:
        return []
    if isinstance(overrides, typing.Mapping):
        bad = [k for k in overrides if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"overrides: keys must be strings such as 'train.steps', got {_got(bad[0])}")
        return [f"{k}={toml_text(v)}" for k, v in overrides.items()]
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"overrides: expected a list of 'key=value' strings or a dict, got the string {overrides!r}")
    if not isinstance(overrides, typing.Iterable):
        raise ConfigError(f"overrides must be a dict or a list of 'key=value' strings, got {_got(overrides)}")
    items = list(overrides)
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise ConfigError(f"overrides: every item must be a 'key=value' string, got {_got(bad[0])}")
    return items


def toml_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def samples(value, name: str = "samples") -> Tensor:
    """A float32 CPU tensor of a tensor, array or nested list of real numbers."""
    if isinstance(value, (str, bytes)) or value is None:
        raise ConfigError(f"{name} must be a tensor or array of numbers, got {_got(value)}")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"{name} must be a tensor or array of numbers ({' '.join(str(err).split())[:80]})") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ConfigError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor.to(device="cpu", dtype=torch.float32)


def api_words(message: str) -> str:
    """A library message in the API's words: the command-line flags become the argument names."""
    for flag_name, name in (("--num-samples", "n"), ("--batch-size", "batch_size"), ("--nfe", "nfe"),
                            ("--class", "class_"), ("--seed", "seed")):
        message = message.replace(flag_name, name)
    return message


def nonfinite(x: Tensor) -> int:
    """How many items (rows of x) hold a NaN or an Inf."""
    return int((~torch.isfinite(x.reshape(len(x), -1))).any(1).sum()) if len(x) else 0


def warn_nonfinite(x: Tensor, what: str = "samples", advice: str = "lower sample.step_size",
                   stacklevel: int = 3) -> int:
    """A RuntimeWarning with the count of items holding NaN or Inf (the flow diverged); the count."""
    bad = nonfinite(x)
    if bad:
        warnings.warn(f"{bad} of {len(x)} {what} hold NaN or Inf values (the flow diverged); {advice}",
                      RuntimeWarning, stacklevel=stacklevel)
    return bad


# ------------------------------------------------------------------------------------ outputs
def _lock_name(target: Path) -> str:
    return f".{target.name}.lock"  # the lock `dmmd sample --out` (runfolder.claim_output) takes for this path


@contextlib.contextmanager
def output_file(value, what: str, inputs: tuple = (), command: str = API):
    """Check a file output (runfolder.check_output_file; a missing parent folder is made), then
    hold the lock beside it for the body: yields the Path to write."""
    target = path(what, value)
    folder = Path(os.path.abspath(target)).parent
    if folder.is_dir():
        check_output_file(target, what, inputs)  # before anything is made
    else:
        check_output_dir(folder, f"{what} {target}: the folder")
    with hold(folder, command, lock_name=_lock_name(target)):  # missing folders made, removed again if left empty
        check_output_file(target, what, inputs)  # (again) under the lock
        yield target


@contextlib.contextmanager
def output_folder(value, what: str, command: str = API):
    """Check a folder output (made if missing; never inside a run's checkpoints/), then hold the lock
    beside it for the body: yields the Path."""
    target = path(what, value)
    check_output_dir(target, what)
    absolute = Path(os.path.abspath(target))
    with hold(absolute.parent, command, lock_name=_lock_name(absolute)):
        # the rules of a file output for the folder, or for its first file when it exists (checkpoints/ refused)
        check_output_file(target / "000000.png" if target.is_dir() else target, what)
        yield target
