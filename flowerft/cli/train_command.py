"""`flowerft train`: the two phases, with a live display and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from flowerft.cli.common import (
    console,
    default,
    fail,
    import_tensorflow_quietly,
    native_stderr_silenced,
    num,
    one_line_errors,
    pct,
    report_and_exit_now,
)
from flowerft.config import CLASS_WEIGHTS, MONITORS, PRECISIONS, RECIPES, to_dict
from flowerft.config_files import given_values, rate_option, resolve
from flowerft.errors import FlowerftError, Interrupted, WorkerLost


def train(
    config_file: Annotated[Optional[Path], typer.Option("--config", help="YAML file of config overrides, or the name of an example (`flowerft configs` lists them).")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="Image folder: a subfolder per class, or train/ val/ test/ of them (default: TFDS tf_flowers).")] = None,
    tfds_data_dir: Annotated[Optional[str], typer.Option(help="TFDS data folder that holds (or will hold) the --tfds dataset.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="CSV of path,label[,split] rows (paths relative to it): the images and their classes.")] = None,
    tfds: Annotated[Optional[str], typer.Option(help="TFDS image-classification dataset NAME[:VERSION], e.g. beans" + default("tfds_name"))] = None,
    tfds_splits: Annotated[Optional[str], typer.Option(help="TFDS splits TEST,VALID,TRAIN, e.g. test,validation,train[:50%] (default: the dataset's own, slices of train where it lacks them).")] = None,
    hf_dataset: Annotated[Optional[str], typer.Option(help="Hugging Face dataset: a save_to_disk folder, parquet files or a hub name (pip install 'flowerft[hf]').")] = None,
    image_column: Annotated[Optional[str], typer.Option(help="The image column (CSV, Hugging Face) or feature (TFDS) (default: found).")] = None,
    label_column: Annotated[Optional[str], typer.Option(help="The label column (CSV, Hugging Face) or feature (TFDS) (default: found).")] = None,
    class_order: Annotated[Optional[str], typer.Option(help="Class names in label order, comma-separated (default: sorted).")] = None,
    recipe: Annotated[Optional[str], typer.Option(help=f"Training recipe: {' or '.join(RECIPES)} (Géron's values); the options below override it" + default("recipe"))] = None,
    weights: Annotated[Optional[str], typer.Option(help="Base weights: imagenet, a '_notop' .weights.h5 or Keras 2 .h5 file, or none (from scratch)" + default("weights"))] = None,
    backbone: Annotated[Optional[str], typer.Option(help="A built-in backbone (`flowerft backbones`), a .keras model file or a KerasHub preset" + default("backbone"))] = None,
    backbone_layer: Annotated[Optional[str], typer.Option(help="With your own backbone: the layer whose output is the features (default: the one below its top)")] = None,
    pixel_scaling: Annotated[Optional[str], typer.Option(help="With your own backbone and no scaling layer in it: tf ([-1, 1]), caffe, torch or none (default: its own)")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Images are resized to this square size" + default("image_size"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per training step" + default("batch_size"))] = None,
    epochs_head: Annotated[Optional[int], typer.Option(help="Epochs training the new head on the frozen base" + default("epochs_head"))] = None,
    epochs_finetune: Annotated[Optional[int], typer.Option(help="Epochs fine-tuning the unfrozen base" + default("epochs_finetune"))] = None,
    lr_head: Annotated[Optional[float], typer.Option(help="Head-phase learning rate (the schedule's peak)" + default("lr_head"))] = None,
    lr_finetune: Annotated[Optional[str], typer.Option(help="Fine-tune learning rate, or auto: found by a sweep between the phases (see `flowerft lr-find`)" + default("lr_finetune"))] = None,
    monitor: Annotated[Optional[str], typer.Option(help=f"Score that picks the best checkpoint: {', '.join(MONITORS)}" + default("monitor"))] = None,
    patience: Annotated[Optional[int], typer.Option(help="End a phase after N epochs without a better validation score" + default("patience"))] = None,
    class_weight: Annotated[Optional[str], typer.Option(help=f"{' or '.join(CLASS_WEIGHTS)}: weigh the loss by inverse class frequency" + default("class_weight"))] = None,
    clipnorm: Annotated[Optional[float], typer.Option(help="Clip each gradient to this norm; 0 turns clipping off" + default("clipnorm"))] = None,
    augment: Annotated[Optional[str], typer.Option(
        metavar="POLICY", help="Training images only: none, basic (flips, small rotations and zooms), randaugment, "
        "mixup or cutmix, or some joined with +, e.g. basic+mixup"+ default("augment"))] = None,
    no_augment: Annotated[bool, typer.Option("--no-augment", show_default=False, help="The older spelling of --augment none.")] = False,
    ema: Annotated[bool, typer.Option("--ema", show_default=False, help="Validate and keep the weights' moving average (config: ema_momentum).")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the split, shuffling and initialisation" + default("seed"))] = None,
    run_dir: Annotated[Optional[str], typer.Option(help="Where to write this run" + default("run_dir"))] = None,
    finetune_blocks: Annotated[Optional[int], typer.Option(help="Fine-tune only the base's last N blocks (0: the whole base)" + default("finetune_blocks"))] = None,
    finetune_from: Annotated[Optional[str], typer.Option(help="Fine-tune the base from this layer up (a layer name of the base; instead of --finetune-blocks)" + default("finetune_from"))] = None,
    precision: Annotated[Optional[str], typer.Option(help=f"{', '.join(PRECISIONS)} (16-bit compute, float32 weights; auto: what the hardware computes fast)" + default("precision"))] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="Fine-tune each batch N images at a time: the same updates in less memory" + default("micro_batch"))] = None,
    mixed_precision: Annotated[bool, typer.Option("--mixed-precision", show_default=False, help="The older spelling of --precision mixed (when --precision names no type).")] = False,
    jit_compile: Annotated[bool, typer.Option("--jit-compile", show_default=False, help="XLA-compile the training step (GPUs).")] = False,
    distribute: Annotated[Optional[str], typer.Option(
        help="tf.distribute strategy: auto (every GPU), none, mirrored, multiworker (TF_CONFIG) or tpu" + default("distribute"))] = None,
    track: Annotated[Optional[str], typer.Option(help="Also log to an experiment tracker: mlflow (pip install 'flowerft[mlflow]') or none" + default("track"))] = None,
    resume: Annotated[bool, typer.Option("--resume", show_default=False, help="Continue the run in --run-dir (default: runs/latest) from its last finished epoch; safe to re-issue after any crash.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", show_default=False, help="Replace the run already in --run-dir (it says what it removed).")] = False,
    show_config: Annotated[bool, typer.Option("--show-config", show_default=False, help="Print the config as YAML (defaults < --recipe < --config < flags) and exit.")] = False,
) -> None:
    """Train a new head on a frozen ImageNet base, then fine-tune the whole network."""
    options = dict(
        recipe=recipe, data_dir=data_dir, tfds_data_dir=tfds_data_dir, weights=weights, backbone=backbone,
        backbone_layer=backbone_layer, pixel_scaling=pixel_scaling,
        image_size=image_size, batch_size=batch_size, epochs_head=epochs_head, epochs_finetune=epochs_finetune,
        lr_head=lr_head, lr_finetune=lr_finetune, monitor=monitor, patience=patience, class_weight=class_weight,
        clipnorm=clipnorm, augment="none" if no_augment else augment, ema=ema or None, seed=seed, run_dir=run_dir,
        finetune_blocks=finetune_blocks, finetune_from=finetune_from, precision=precision, micro_batch=micro_batch,
        # A switch left off keeps whatever the YAML file says.
        labels=labels, tfds_name=tfds, tfds_splits=tfds_splits, hf_dataset=hf_dataset, image_column=image_column,
        label_column=label_column, class_order=class_order,
        mixed_precision=mixed_precision or None, jit_compile=jit_compile or None, distribute=distribute,
        track=track,
    )
    with one_line_errors():  # Ctrl-C before training started: nothing to save
        options["lr_finetune"] = rate_option(lr_finetune)
        if resume and overwrite:  # one would silently lose: checked before anything is read
            raise FlowerftError("--resume continues the run in --run-dir and --overwrite replaces it; give one of them")
        if no_augment and augment is not None:
            raise FlowerftError(f"--no-augment is the older spelling of --augment none; give --augment {augment} alone")
        given = given_values(config_file, **options)  # the YAML file is read once
        config = resolve(given)
        if show_config:
            import yaml  # here: `flowerft --help` must stay instant

            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")  # as a run's config.yaml spells it
            return
        import_tensorflow_quietly()
        from flowerft.cli.progress_display import training_display
        from flowerft.training import session as training

        try:
            # libjpeg writes "Improper call to JPEG library" to stderr itself while the data scan
            # reads broken files (each is reported in our own line): it would glue onto the live display.
            with training_display(console) as display, native_stderr_silenced():
                result = training.run(
                    config,
                    callbacks=display.callbacks,
                    notify=display.notify,
                    resume=resume,
                    overwrite=overwrite,
                    # A resumed run keeps its own options; those given now must agree with them.
                    given=given if resume else None,
                )
        except Interrupted as e:
            fail(str(e), code=130)
        except WorkerLost as e:
            # TensorFlow's collective runtime has lost its peer: its thread pools then fail at interpreter
            # shutdown (an OSError traceback from multiprocessing's Pool.__del__ after our one line), so
            # leave without running them; everything the run needs was saved at its last epoch.
            report_and_exit_now(str(e))
    console.print(phase_table(result.metrics))
    for warning in result.metrics["warnings"]:
        console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False, soft_wrap=True)
    console.print(f"Best model: {result.run_dir / result.metrics['best_checkpoint']}", highlight=False, soft_wrap=True)


def phase_table(metrics: dict) -> Table:
    """Per phase: its best epoch with that epoch's validation accuracy and loss, and its last epoch."""
    # Short headers, each one line at 80 columns, and one space beside each rule (collapse_padding):
    # with two the eight columns need 82 and Rich cuts the last value short. The caption says what
    # the headers mean.
    table = Table(title="Training summary", collapse_padding=True)
    for column in ("phase", "epochs", "best", "val acc", "val loss", "last acc", "last loss", "time"):
        table.add_column(column, justify="left" if column == "phase" else "right", no_wrap=True)
    for name, p in metrics["phases"].items():
        star = " *" if name == metrics["best_phase"] else ""
        table.add_row(
            name + star, f"{p['epochs_run']}/{p['epochs_planned']}", str(p["best_epoch"] or "-"),
            pct(p["best_val_accuracy"]), num(p.get("best_epoch_val_loss")), pct(p["last_val_accuracy"]),
            num(p["last_val_loss"]), f"{p['wall_time_s']:.0f} s",
        )
    score = {"accuracy": "highest validation accuracy", "balanced_accuracy": "highest validation balanced accuracy",
             "loss": "lowest validation loss"}[metrics.get("monitor", "accuracy")]
    ended = [f"{name} stopped early ({p['ended_early']})" for name, p in metrics["phases"].items() if p.get("ended_early")]
    table.caption = (f"best: the epoch of {score} (counted over both phases), with its val acc and val loss; last: the "
                     f"last epoch's; * the phase of the best model" + "".join(f"; {line}" for line in ended))
    return table
