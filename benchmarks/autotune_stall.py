"""What tf.data's autotuner costs when an iterator ends: TensorFlow's default against flowerft's pipelines.

    python benchmarks/autotune_stall.py --images 2750 --image-size 128 --epochs 4

flowerft turns autotuning off in every pipeline (flowerft/data/dataset_options.py says why).
This measures both settings on the same pipeline (pipelines.indexed_pipeline: images held in
memory, batches of 32) and the same network (Xception, random weights, frozen, a Dense head),
each leg in a fresh process, one after the other:
  (1) one inference pass over the images (what the head phase does to compute its features),
      then the deletion of the iterator: how long the pass took, how long the deletion blocked;
  (2) Keras `fit` for --epochs epochs with a validation quarter (Keras makes a new iterator
      every epoch): wall time of the whole fit and of each epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def leg(kind: str, autotune: bool, n: int, size: int, epochs: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from flowerft.data import pipelines

    def as_asked(ds):
        options = tf.data.Options()
        options.autotune.enabled = autotune  # flowerft's pipelines come with it off
        ds = ds.with_options(options)
        assert ds.options().autotune.enabled is autotune
        return ds

    base = keras.applications.Xception(weights=None, include_top=False, input_shape=(size, size, 3), pooling="avg")
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    labels = tf.constant(np.arange(n) % 5)
    ds = as_asked(pipelines.indexed_pipeline(images, labels, batch_size=32))
    if kind == "inference":
        spec = tf.TensorSpec([None, size, size, 3], tf.float32)
        features = tf.function(lambda x: base(x, training=False), input_signature=[spec])
        start = time.perf_counter()
        iterator = iter(ds)
        for x, _ in iterator:
            np.asarray(features(x))
        passed = time.perf_counter()
        del iterator
        return {"pass": passed - start, "deletion": time.perf_counter() - passed}
    base.trainable = False
    model = keras.Sequential([base, keras.layers.Dense(5, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    valid = as_asked(pipelines.indexed_pipeline(images[: n // 4], labels[: n // 4], batch_size=32))
    marks = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda *_: marks.append(time.perf_counter()),
                                           on_epoch_end=lambda *_: marks.append(time.perf_counter()))
    start = time.perf_counter()
    model.fit(ds, validation_data=valid, epochs=epochs, verbose=0, callbacks=[timer])
    return {"fit": time.perf_counter() - start, "epochs": [marks[i + 1] - marks[i] for i in range(0, len(marks), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2750, help="tf_flowers' training split")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--leg", nargs=2, help=argparse.SUPPRESS)  # kind, on|off: one measurement, in this process
    args = parser.parse_args()
    if args.leg:
        kind, autotune = args.leg
        print(json.dumps(leg(kind, autotune == "on", args.images, args.image_size, args.epochs)))
        return

    def run(kind: str, autotune: str) -> dict:
        command = [sys.executable, __file__, "--leg", kind, autotune, "--images", str(args.images),
                   "--image-size", str(args.image_size), "--epochs", str(args.epochs)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"Xception (random weights) at {args.image_size} px, batch 32, {args.images} images; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    for autotune, name in (("on", "TensorFlow's default (autotune on)"), ("off", "flowerft (autotune off)")):
        r = run("inference", autotune)
        print(f"(1) {name}: inference pass {r['pass']:.1f} s, then deleting the iterator {r['deletion']:.2f} s",
              flush=True)
    for autotune, name in (("on", "TensorFlow's default (autotune on)"), ("off", "flowerft (autotune off)")):
        r = run("fit", autotune)
        epochs = ", ".join(f"{s:.1f}" for s in r["epochs"])
        print(f"(2) {name}: fit, {args.epochs} epochs, {r['fit']:.1f} s (each epoch: {epochs} s)", flush=True)


if __name__ == "__main__":
    main()
