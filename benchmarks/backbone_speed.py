"""How fast each backbone fine-tunes on this machine: images/s of whole-network fine-tuning steps.

    python benchmarks/benchmark.py --part backbones --image-size 224 --batch-size 8 --steps 3

For each registry backbone (or those given with --families): flowerft's classifier at
--image-size with random weights (`none`: speed does not depend on them), the base unfrozen by
flowerft's rule (BatchNorm frozen, LayerNorm trains), compiled as the fine-tune phase is, then one
warm-up step (tracing) and --steps timed `train_on_batch` steps on in-memory images. Prints one
row per backbone as it goes, then a Markdown table sorted by speed.
"""

from __future__ import annotations

import gc
import json
import time

import numpy as np


def fine_tune_rate(name: str, image_size: int, batch_size: int, steps: int) -> dict:
    import keras

    from flowerft.config_files import make_config
    from flowerft.model import build_model, unfreeze_base
    from flowerft.training.optimizer import compile_for_phase

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    model, base = build_model(make_config(backbone=name, weights="none", image_size=image_size), 5)
    built = time.perf_counter() - start
    unfreeze_base(base)
    compile_for_phase(model, lr=0.001, decay=0.001, momentum=0.9, clipnorm=1.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype("float32")
    labels = np.arange(batch_size) % 5
    model.train_on_batch(images, labels)  # traces the step: not timed
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    seconds = time.perf_counter() - start
    row = {"backbone": name, "parameters": model.count_params(), "images_per_s": round(steps * batch_size / seconds, 2),
           "build_s": round(built, 1)}
    del model, base
    keras.backend.clear_session()
    gc.collect()
    return row


def run(args) -> list[dict]:
    from flowerft.backbones.registry import BACKBONES

    names = args.families or list(BACKBONES)
    print(f"fine-tuning speed per backbone: {args.image_size} px, batch {args.batch_size}, {args.steps} timed steps "
          "after one warm-up step, random weights, whole base unfrozen (BatchNorm frozen)", flush=True)
    rows = []
    for name in names:
        try:
            rows.append(fine_tune_rate(name, args.image_size, args.batch_size, args.steps))
        except Exception as e:  # e.g. out of memory for the largest ones: say so, go on
            rows.append({"backbone": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| backbone | parameters | fine-tune images/s |")
    print("|---|---|---|")
    for r in sorted(rows, key=lambda r: -r.get("images_per_s", -1)):
        rate = r.get("images_per_s")
        shown = f"{rate:.2f}" if rate is not None else f"not measured ({r['error']})"
        params = f"{r['parameters'] / 1e6:.1f}M" if "parameters" in r else "-"
        print(f"| {r['backbone']} | {params} | {shown} |")
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("--families", nargs="*", help="--part backbones: only these backbones (default: all)")
