"""`dmmd calibrate`: store a DMMD checkpoint's sampler statistics for other sampler settings."""

from __future__ import annotations

from dmmd.cli.common import bar_off, sample_config
from dmmd.config import ConfigError
from dmmd.data.datasets import load_dataset
from dmmd.methods.build import build_process, flow_settings, load_model
from dmmd.methods.latent import encode_dataset, for_config
from dmmd.methods.resources import check_flow
from dmmd.methods.sample import calibrate
from dmmd.runtime import checkpoint as ckpt
from dmmd.runtime import statsfile
from dmmd.runtime.runfolder import check_output_dir, enter, hold, remove_stale_temps


def add_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="store level statistics and a mean-field replay for sampler settings",
                       description="Compute, from the training data, what the approx sampler needs for the given "
                       "sample.* settings (level mean features; the replay trajectory of reading (c)) and store it "
                       "in the checkpoint.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint file or run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="sample.* settings to calibrate for, e.g. --set sample.num_levels=20")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from tqdm.auto import tqdm


    path = ckpt.resolve(args.checkpoint)
    check_output_dir(statsfile.stats_path(path).parent, "statistics folder")
    # the run folder's lock: no training step or other calibrate can change this checkpoint meanwhile
    enter(hold(statsfile.lock_folder(path), "dmmd calibrate"))
    remove_stale_temps(statsfile.stats_path(path).parent, subfolders=("",))  # left by a killed calibrate
    cfg, disc, stats, payload = load_model(path)
    if cfg.method != "dmmd":
        raise ConfigError(f"calibrate makes the statistics of DMMD's samplers; {path} was trained with method = "
                          f"{cfg.method!r}, whose samplers need none")
    cfg = sample_config(args, cfg)
    check_flow(cfg, tuple(payload["data_shape"]))  # the NFE and the replay's particles, before any compute
    data = load_dataset(cfg.data, cfg.seed)
    if cfg.model.latent:  # a latent model calibrates on the encoded data
        data = encode_dataset(data, for_config(cfg), cfg.data, progress=not bar_off(args))
    settings = flow_settings(cfg.sample)
    with tqdm(total=settings.num_steps, desc="calibrate", disable=bar_off(args)) as bar:
        stats = calibrate(disc, cfg, data.train, build_process(cfg.process), stats, settings, bar,
                          labels=data.labels_train)
    written = statsfile.save(path, stats)  # beside the checkpoint, which is never rewritten
    print(f"stored statistics for {settings.tag()} in {written}")
    return 0
