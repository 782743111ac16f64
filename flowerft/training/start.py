"""How a run begins: the checks before any data is read, what it tells the user it trains on,
and its run dir, started anew or reopened for `--resume`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras

from flowerft import precision
from flowerft.backbones.registry import is_own
from flowerft.config import Config, to_dict
from flowerft.data import splitting
from flowerft.errors import ConfigError, FlowerftError
from flowerft.model import batchnorm_learns
from flowerft.runs import layout, lock, source_record
from flowerft.training import checkpoints, partial_finetune
from flowerft.training.checkpoints import Progress


def check_inputs(config: Config, run_dir: Path) -> None:
    """What can be checked before any data is read or model built."""
    layout.check_writable(run_dir)
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise ConfigError(f"weights: {config.weights} is neither imagenet, none nor an existing weights file")
    if is_own(config.backbone):  # before any data is read: a missing file, an unreachable preset
        from flowerft.backbones import hub_presets

        hub_presets.check_reachable(config.backbone)
        if not hub_presets.is_preset(config.backbone) and not Path(config.backbone).expanduser().is_file():
            raise ConfigError(f"backbone: {config.backbone} does not exist; give a .keras model file, a KerasHub "
                              "preset (a folder, hf://... or kaggle://...) or a built-in name (flowerft backbones)")


def check_base_weights(run_dir: Path, config: Config) -> None:
    """A resumed run's weights file, which its model is rebuilt from."""
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise FlowerftError(f"cannot resume {run_dir}: it started from the weights file {config.weights}, which is "
                            "gone; put it back there, or start the run again with --overwrite")


def data_lines(splits: splitting.Splits) -> list[str]:
    """The classes and split sizes, the source's notes, and the files it skipped."""
    lines = [f"{len(splits.class_names)} classes ({', '.join(splits.class_names)}); "
             + ", ".join(f"{splits.sizes[s]} {s}" for s in splitting.SPLIT_NAMES) + " images", *splits.notes]
    if splits.skipped:
        shown = ", ".join(splits.skipped[:3]) + (f" and {len(splits.skipped) - 3} more" if len(splits.skipped) > 3 else "")
        many = len(splits.skipped) > 1
        lines.append(f"skipped {len(splits.skipped)} file{'s' if many else ''} that {'are' if many else 'is'} not "
                     f"{'readable images' if many else 'a readable image'}: {shown}")
    return lines


def start_line(config: Config, where: str, cache: str) -> str:
    """What this run trains on and how, in one line: every choice that changes its result or speed."""
    batch = f"batch {config.batch_size}" + (f" in micro-batches of {config.micro_batch}" if config.micro_batch else "")
    more = [f"recipe {config.recipe}"] + ([f"augmented ({config.augment})"] if config.augment != "none" else [])
    more += [f"weight EMA {config.ema_momentum:g}"] if config.ema else []
    if partial_finetune.is_partial(config):
        more.append(f"fine-tuning the last {config.finetune_blocks} blocks" if config.finetune_blocks
                    else f"fine-tuning from layer {config.finetune_from}")
    if not batchnorm_learns(config):
        rule = f"weights {Path(config.weights).name}: BatchNorm frozen (pretrained statistics)"
    elif config.epochs_head:
        rule = "weights none: BatchNorm learns while fine-tuning (a head on random frozen features learns little)"
    else:
        rule = "weights none: from scratch, the whole network and its BatchNorm learn from the first epoch"
    return (f"training on {where}: {precision.policy(config)}, cache {cache}, {config.backbone} at "
            f"{config.image_size} px, {batch}, {', '.join(more)}; {rule}")


def start_run_dir(run_dir: Path, config: Config, splits: splitting.Splits, model: keras.Model, overwrite: bool,
                  notify: Callable[[str], None]) -> None:
    """A new run dir with everything `evaluate`, `predict` and `--resume` need."""
    removed = []
    if overwrite and run_dir.exists():
        removed = layout.clear_run(run_dir, keep=lock.LOCK)  # check_new made sure it is a flowerft run
    layout.make_run_dir(run_dir)
    layout.write_yaml(run_dir / layout.CONFIG, to_dict(config) | {"run_dir": str(run_dir)})  # marks a run: layout.is_run
    layout.write_json(run_dir / layout.CLASS_NAMES, splits.class_names)
    if splits.files is not None:
        layout.write_json(run_dir / layout.SPLITS, splits.files)
    if splits.record:  # where the images are, so that evaluate, report and --resume find them again
        layout.write_json(run_dir / source_record.SOURCE, splits.record)
    if splits.skipped:
        layout.write_json(run_dir / layout.SKIPPED, splits.skipped)
    checkpoints.save_initial(model, run_dir, config.weights)
    layout.set_latest(run_dir, config.runs_root)  # now, so that `--resume` finds a run that dies
    if removed:
        shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
        notify(f"--overwrite: removed the earlier run in {run_dir} ({shown})")
    notify(f"run dir: {run_dir}")


def reopen_run_dir(run_dir: Path, model: keras.Model, progress: Progress | None, notify: Callable[[str], None]) -> None:
    """A run dir to resume, tidied after a kill; `model` made the run's untrained classifier."""
    for folder in (run_dir, run_dir / checkpoints.STATE):  # a kill inside a write left these (we hold the lock)
        layout.remove_partial_writes(folder)
    checkpoints.load_initial(model, run_dir)
    where = f"{progress.phase} epoch {progress.epochs_done + 1}" if progress else "the start"
    notify(f"resuming {run_dir} from {where}")
