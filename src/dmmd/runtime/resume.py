"""What a resumed run may change: its length, its bookkeeping, where it runs and its learning
rate; anything else needs a new run."""

from __future__ import annotations

from dmmd.config import ConfigError, to_dict

# keys a resumed run may change: the length of the run, its bookkeeping, where it runs, the rate
RESUMABLE = ("train.steps", "train.checkpoint_every", "train.log_every", "train.keep_checkpoints",
             "train.threads", "train.device", "train.lr")


def resume_changes(old, new) -> list[str]:
    """The config keys whose values differ between two Configs, in schema order."""

    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(to_dict(old)), flat(to_dict(new))
    return [k for k in b if a.get(k) != b[k]]


def check_resume(old, new, where: str) -> None:
    """ConfigError when `new` changes a key a resumed run cannot change (anything but RESUMABLE)."""

    refused = [k for k in resume_changes(old, new) if k not in RESUMABLE]
    if refused:
        a, b = _values(old, refused), _values(new, refused)
        shown = "; ".join(f"{k}: {a[k]!r} -> {b[k]!r}" for k in refused[:4]) + ("; ..." if len(refused) > 4 else "")
        raise ConfigError(f"--resume cannot change {', '.join(refused)} ({shown}; {where}); a resumed run may "
                          f"change only {', '.join(RESUMABLE)}: start a new run for other settings")


def _values(cfg, keys) -> dict:
    out = {}
    for key in keys:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        out[key] = obj
    return out
