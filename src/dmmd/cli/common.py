"""What several commands share: the config source, progress bars, run folder names, sampling settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from dmmd import config, presets
from dmmd.methods.sample import settings_for_nfe
from dmmd.runtime.terminal import bars_drawable


def add_config_args(p: argparse.ArgumentParser, example: str = "train.steps=500") -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="TOML or JSON config; defaults are used for keys it "
                        "leaves out")
    source.add_argument("--preset", metavar="NAME", help="a config shipped with dmmd, e.g. digits or "
                        "eight_gaussians (`dmmd presets` lists them; configs/ in a checkout holds the same files)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config key, e.g. --set {example} (repeatable; checked against the "
                        "key's type; run `dmmd train --dry-run` to see every key)")


def config_source(args, default: str | None = None):
    """The --config file, the --preset's file, or the default preset's (None: defaults only)."""

    if getattr(args, "preset", None):
        return presets.path(args.preset)
    if args.config:
        return args.config
    return presets.path(default) if default else None


def bar_off(args) -> bool:
    """Progress bars only on a terminal: redirected to a file, their redraws fill it."""
    return args.no_progress or not bars_drawable()


def next_run_dir(cfg) -> Path:
    root = Path("runs")
    numbers = [int(p.name.split("-")[0]) for p in root.glob("[0-9]" * 5 + "-*")] if root.is_dir() else []
    return root / f"{max(numbers, default=0) + 1:05d}-{cfg.data.name}-{cfg.method}"


def sample_config(args, cfg):
    """The checkpoint's config with --sampler, then --nfe's settings, then --set sample.* applied."""

    keys = []
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith("sample."):
            raise config.ConfigError(f"only sample.* keys can be changed at sampling time, got {key!r}")
        keys.append(key)
    if getattr(args, "sampler", None):
        cfg.sample.sampler = args.sampler
    if getattr(args, "guidance", None) is not None:
        config.set_value(cfg, "sample.guidance", args.guidance)
    if getattr(args, "nfe", None) is not None:
        if args.nfe < 1:
            raise config.ConfigError(f"--nfe must be >= 1, got {args.nfe}")
        settings_for_nfe(cfg, args.nfe, keep=keys)
    for item in args.overrides:
        key, _, value = item.partition("=")
        config.set_value(cfg, key.strip(), value.strip())
    config.validate(cfg)
    return cfg


def device_and_dry_run(args, cfg) -> bool:
    """--device sets train.device (checked); True when --dry-run printed the resolved config instead."""
    if args.device:
        config.set_value(cfg, "train.device", args.device)
        config.validate(cfg)
    if args.dry_run:
        print(config.to_json(cfg))
    return args.dry_run
