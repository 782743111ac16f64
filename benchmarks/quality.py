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


def subset_folder(source: Path, per_class: int, target: Path) -> Path:
    """The first `per_class` images of each class of `source`, linked into `target`."""
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:per_class]:
            (target / folder.name / image.name).symlink_to(image.resolve())
    return target


def test_accuracy(run_dir: Path, checkpoint: str | None) -> float | None:
    """Accuracy of one checkpoint of a run on the run's recorded test split."""
    if checkpoint is None:
        return None
    from flowerft.reporting.evaluate import predict_split

    probabilities, labels, _ = predict_split(run_dir, run_dir / checkpoint, "test")
    return float((probabilities.argmax(axis=1) == labels).mean())


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
    row = {
        "recipe": name, "seed": seed,
        "head_val": head["best_val_accuracy"], "head_test": test_accuracy(result.run_dir, head["checkpoint"]),
        "finetune_val": finetune["best_val_accuracy"],
        "finetune_test": test_accuracy(result.run_dir, finetune["checkpoint"]),
        "best_phase": metrics["best_phase"],
        "diverged": finetune["stopped_because"] or head["stopped_because"],
        "wall_s": round(wall, 1),
    }
    keras.backend.clear_session()
    return row


def pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_table(rows: list[dict]) -> None:
    print("| recipe | seed | head val | head-only test | fine-tuned val | fine-tuned test | best checkpoint (test) "
          "| fine-tuning diverged | wall time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = r["finetune_test"] if r["best_phase"] == "finetune" else r["head_test"]
        print(f"| {r['recipe']} | {r['seed']} | {pct(r['head_val'])} | {pct(r['head_test'])} | {pct(r['finetune_val'])} "
              f"| {pct(r['finetune_test'])} | {r['best_phase'] or '-'} ({pct(best)}) | {'yes' if r['diverged'] else 'no'} "
              f"| {r['wall_s'] / 60:.1f} min |")
    print()
    print("| recipe | mean head-only test error | mean test error of the best checkpoint | "
          "fine-tuned / head-only test error, per seed | runs whose fine-tuning diverged |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        head = [1 - r["head_test"] for r in mine]
        best = [1 - (r["finetune_test"] if r["best_phase"] == "finetune" else r["head_test"]) for r in mine]
        ratios = [
            f"{(1 - r['finetune_test']) / (1 - r['head_test']):.2f}"
            if r["finetune_test"] is not None and r["head_test"] != 1.0 else "-"
            for r in mine
        ]
        diverged = sum(1 for r in mine if r["diverged"])
        print(f"| {name} | {pct(sum(head) / len(head))} | {pct(sum(best) / len(best))} | {' '.join(ratios)} "
              f"| {diverged} of {len(mine)} |")


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
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import tensorflow as tf

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="flowerft-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir
    if args.per_class:
        data_dir = subset_folder(args.data_dir, args.per_class, work / f"first-{args.per_class}-per-class")
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
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
