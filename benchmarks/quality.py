"""Does fine-tuning pay? Train recipes on a real image folder with real weights, and compare.

    python benchmarks/quality.py --data-dir ~/.cache/flowerft-devkit/shoes5 \
        --weights ~/.cache/flowerft-devkit/weights/xception_imagenet_notop.weights.h5 \
        --image-size 96 --epochs-head 3 --epochs-finetune 5 --seeds 1 2 3

For every recipe and seed it runs `flowerft train` (the library call) in a fresh run directory,
then measures on the run's own test split (never seen in training) the head phase's best
checkpoint ("head only": the same run stopped before fine-tuning) and the fine-tuned one. It
prints one row per run, then per recipe the mean test error of the head and of fine-tuning and
their ratio. A seed sets the split, the shuffle and the head's initialisation, so the rows of
one seed share their test images.

Recipes are the named ones (`--recipes book flowerft`) and variants of them given as
`--variant NAME:key=value,key=value` (config keys; `recipe=book` starts from the book's values).
Weights and images stay where they are: nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:key=value,key=value' -> (name, {key: YAML-typed value})."""
    import yaml

    from flowerft.config_files import _loader

    name, _, pairs = text.partition(":")
    values = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        values[key.strip()] = yaml.load(value, Loader=_loader())  # 1e-3 is a number, as in config files
    return name, values


def subset_folder(source: Path, target: Path, per_class: int | None = None, fraction: float = 1.0) -> Path:
    """The first `per_class` images (or the first `fraction`) of each class of `source`, linked into `target`.

    A fraction keeps the classes' proportions: half of the long-tail set is still 16x from largest to smallest.
    """
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        images = sorted(folder.iterdir())
        for image in images[:per_class or round(len(images) * fraction)]:
            (target / folder.name / image.name).symlink_to(image.resolve())
    return target


def test_scores(run_dir: Path, checkpoint: str | None, tta: str | None = None) -> tuple[float | None, float | None]:
    """Accuracy and balanced accuracy of one checkpoint of a run on the run's recorded test split
    (with `tta` "flip": evaluate --tta's flip averaging)."""
    if checkpoint is None:
        return None, None
    from sklearn.metrics import balanced_accuracy_score

    from flowerft.reporting.evaluate import predict_split

    probabilities, labels, _ = predict_split(run_dir, run_dir / checkpoint, "test", tta=tta)
    predicted = probabilities.argmax(axis=1)
    return float((predicted == labels).mean()), float(balanced_accuracy_score(labels, predicted))


def run_one(name: str, values: dict, seed: int, common: dict, work: Path) -> dict:
    import keras

    from flowerft.config_files import resolve
    from flowerft.training import session

    config = resolve(common | values | {"seed": seed, "run_dir": str(work / f"{name}-seed{seed}")})
    start = time.perf_counter()
    result = session.run(config)
    wall = time.perf_counter() - start
    metrics = result.metrics
    head, finetune = metrics["phases"]["head"], metrics["phases"]["finetune"]
    head_test, head_balanced = test_scores(result.run_dir, head["checkpoint"])
    finetune_test, finetune_balanced = test_scores(result.run_dir, finetune["checkpoint"])
    best_test, best_balanced = test_scores(result.run_dir, metrics["best_checkpoint"])
    tta_test, tta_balanced = test_scores(result.run_dir, metrics["best_checkpoint"], tta="flip")
    row = {
        "recipe": name, "seed": seed,
        "head_val": head["best_val_accuracy"], "head_test": head_test, "head_balanced": head_balanced,
        "finetune_val": finetune["best_val_accuracy"], "finetune_test": finetune_test,
        "finetune_balanced": finetune_balanced, "best_phase": metrics["best_phase"],
        "best_test": best_test, "best_balanced": best_balanced, "tta_test": tta_test, "tta_balanced": tta_balanced,
        "lr_finetune": metrics.get("lr_finetune"),
        "epochs_run": head["epochs_run"] + finetune["epochs_run"],
        "diverged": finetune["stopped_because"] or head["stopped_because"],
        "wall_s": round(wall, 1),
    }
    keras.backend.clear_session()
    return row


def pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def print_table(rows: list[dict]) -> None:
    print("| recipe | seed | head-only test | fine-tuned test | best checkpoint: test acc | balanced acc "
          "| fine-tune lr | epochs run | diverged | wall time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['seed']} | {pct(r['head_test'])} | {pct(r['finetune_test'])} "
              f"| {r['best_phase'] or '-'} {pct(r.get('best_test'))} | {pct(r.get('best_balanced'))} "
              f"| {r.get('lr_finetune') or '-'} | {r.get('epochs_run', '-')} | {'yes' if r['diverged'] else 'no'} "
              f"| {r['wall_s'] / 60:.1f} min |")
    print()
    print("| recipe | runs | mean test accuracy (best checkpoint) | mean balanced accuracy | min-max test accuracy "
          "| with evaluate --tta: accuracy, balanced | mean wall time | runs whose fine-tuning diverged |")
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        tests = [r.get("best_test") for r in mine if r.get("best_test") is not None]
        spread = f"{pct(min(tests))}-{pct(max(tests))}" if tests else "-"
        diverged = sum(1 for r in mine if r["diverged"])
        print(f"| {name} | {len(mine)} | {pct(mean(tests))} | {pct(mean(r.get('best_balanced') for r in mine))} "
              f"| {spread} | {pct(mean(r.get('tta_test') for r in mine))}, {pct(mean(r.get('tta_balanced') for r in mine))} "
              f"| {mean(r['wall_s'] for r in mine) / 60:.1f} min | {diverged} of {len(mine)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, type=Path, help="image folder, one subfolder per class")
    parser.add_argument("--weights", required=True, help="the backbone's ImageNet '_notop' weights file")
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs-head", type=int, default=3)
    parser.add_argument("--epochs-finetune", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--recipes", nargs="*", default=["book", "flowerft"], help="named recipes to train")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="a recipe variant (repeatable), e.g. 'ls0:label_smoothing=0'")
    parser.add_argument("--per-class", type=int, help="use only the first N images of each class")
    parser.add_argument("--fraction", type=float, default=1.0, help="use only the first FRACTION of each class's images")
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tensorflow as tf

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flowerft-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir
    if args.per_class or args.fraction < 1:
        data_dir = subset_folder(args.data_dir, work / f"subset-{args.per_class or args.fraction}", args.per_class,
                                 args.fraction)
    common = dict(
        data_dir=str(data_dir), weights=args.weights, backbone=args.backbone, image_size=args.image_size,
        batch_size=args.batch_size, epochs_head=args.epochs_head, epochs_finetune=args.epochs_finetune,
        tensorboard=False, runs_root=str(work),  # leave the user's runs/latest alone
    )
    recipes = [(name, {"recipe": name}) for name in args.recipes] + [parse_variant(v) for v in args.variant]
    print(f"$ python {' '.join(sys.argv)}", flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"TensorFlow {tf.__version__}; {args.backbone} at {args.image_size} px, batch {args.batch_size}, "
          f"{args.epochs_head} + {args.epochs_finetune} epochs", flush=True)
    rows = []
    for seed in args.seeds:
        for name, values in recipes:
            rows.append(run_one(name, values, seed, common, work))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:  # as it goes: a long measurement stopped halfway keeps its rows
                args.json.write_text(json.dumps(rows, indent=2))
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
