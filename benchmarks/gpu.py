"""The book's run on a GPU: wall time per phase, images/s, GPU utilisation, time waited on input.

    python benchmarks/gpu.py                      # ImageNet Xception weights (downloads once)
    python benchmarks/gpu.py --weights none       # offline: random weights train at the same speed

For a machine with an NVIDIA GPU and TensorFlow's CUDA build (`pip install "tensorflow[and-cuda]"`);
elsewhere it stops at once with one line saying so. It runs Géron's recipe as `flowerft train`
runs it (--recipe book: 5 head + 10 fine-tune epochs, Xception, 224 px, batch 32) on a generated
folder the size of tf_flowers (3,670 JPEGs of 240-500 px), with --precision auto, once with
--jit-compile off and once on, and prints for each:
  - wall time and images/s of each phase (the head phase's includes computing its cached features);
  - GPU utilisation during fine-tuning, sampled by `nvidia-smi` every 0.5 s (mean, and the share of
    samples at 90% or more);
  - how long fine-tuning waited on input: one epoch's time on the run's tf.data pipeline minus the
    same steps on one batch already on the device (the model's own speed), measured in this process.
What to look for: the GPU busy >= 90% of fine-tuning, and input wait near 0 (the input is never the
bottleneck). If the input waits, the first epoch decodes every JPEG (later ones read the cache): look
at the fine-tune epochs after the first, or give the machine more CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TF_FLOWERS_IMAGES = 3670
NO_GPU = ("no GPU is visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty): run this on a "
          "machine with an NVIDIA GPU and TensorFlow's CUDA build (pip install \"tensorflow[and-cuda]\"); "
          "benchmarks/benchmark.py measures the CPU")


class GpuSampler:
    """`nvidia-smi` sampling the first GPU's utilisation in the background while training runs."""

    def __init__(self, interval_ms: int = 500):
        self.interval_ms, self.samples, self.process, self.thread = interval_ms, [], None, None

    def start(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0",
             f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.thread.join(timeout=5)

    def summary(self) -> str:
        if self.process is None:
            return "not sampled (no nvidia-smi on PATH)"
        if not self.samples:
            return "no samples (nvidia-smi printed nothing)"
        busy = sum(s >= 90 for s in self.samples) / len(self.samples)
        return f"mean {sum(self.samples) / len(self.samples):.0f}%, >= 90% in {busy:.0%} of {len(self.samples)} samples"


def sampling_callbacks(sampler: GpuSampler):
    """flowerft's callback factory: sample the GPU while the fine-tuning phase fits."""
    import keras

    def factory(phase, config):
        if phase != "finetune":
            return []
        return [keras.callbacks.LambdaCallback(on_train_begin=lambda logs: sampler.start(),
                                               on_train_end=lambda logs: sampler.stop())]
    return factory


def input_wait(config, steps: int) -> tuple[float, float]:
    """(seconds of one fine-tune epoch on the pipeline, seconds of the same steps on one device-resident batch)."""
    import keras
    import tensorflow as tf

    from flowerft import precision
    from flowerft.data import pipelines, sources
    from flowerft.model import build_model, unfreeze_base
    from flowerft.training.optimizer import compile_for_phase

    splits = sources.load(config)
    keras.mixed_precision.set_global_policy(precision.policy(config))
    try:
        keras.utils.set_random_seed(config.seed)
        model, base = build_model(config, len(splits.class_names))
        unfreeze_base(base)
        compile_for_phase(model, lr=config.lr_finetune, decay=config.decay_finetune, momentum=config.momentum,
                          clipnorm=config.clipnorm, jit_compile=config.jit_compile)
        pipeline = pipelines.pipeline(splits, "train", config, training=True, cache="memory").take(steps)
        batch = next(iter(pipeline))
        resident = tf.data.Dataset.from_tensors(batch).repeat(steps)
        seconds = {}
        for name, ds in (("pipeline", pipeline), ("resident", resident)):
            times = []
            timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: times.append(time.perf_counter()),
                                                   on_epoch_end=lambda e, logs: times.append(time.perf_counter()))
            model.fit(ds, epochs=2, callbacks=[timer], verbose=0)  # epoch 1 traces (and fills the cache)
            seconds[name] = times[3] - times[2]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return seconds["pipeline"], seconds["resident"]


def one_run(folder: Path, work: Path, args, jit: bool) -> None:
    import keras

    from flowerft.config_files import make_config
    from flowerft.training import session

    config = make_config(
        data_dir=str(folder), recipe="book", backbone="xception", weights=args.weights, image_size=args.image_size,
        batch_size=args.batch_size, epochs_head=args.epochs_head, epochs_finetune=args.epochs_finetune,
        precision="auto", jit_compile=jit, run_dir=str(work / f"run-jit-{'on' if jit else 'off'}"),
        runs_root=str(work / "runs"), tensorboard=False,
    )
    sampler = GpuSampler()
    result = session.run(config, callbacks=sampling_callbacks(sampler))
    metrics = result.metrics
    train_images = metrics["split_sizes"]["train"]
    print(f"--jit-compile {'on' if jit else 'off'} ({metrics['precision_policy']}):", flush=True)
    for name, phase in metrics["phases"].items():
        seconds = phase["wall_time_s"]
        rate = phase["epochs_run"] * train_images / seconds if seconds else 0.0
        print(f"  {name:9s} {phase['epochs_run']:2d} epochs  {seconds:8.1f} s  {rate:8.1f} images/s", flush=True)
    print(f"  GPU utilisation while fine-tuning: {sampler.summary()}", flush=True)
    steps = max(1, train_images // config.batch_size)
    on_pipeline, resident = input_wait(config, steps)
    waited = max(0.0, on_pipeline - resident)
    print(f"  input wait: one fine-tune epoch {on_pipeline:.1f} s on the pipeline, {resident:.1f} s on a batch "
          f"already on the GPU -> waited {waited:.1f} s ({waited / on_pipeline:.0%} of the epoch)", flush=True)
    keras.backend.clear_session()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="imagenet", help="imagenet (downloads once), none, or a weights file")
    parser.add_argument("--images", type=int, default=TF_FLOWERS_IMAGES)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs-head", type=int, default=5)
    parser.add_argument("--epochs-finetune", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the generated folder and the runs")
    args = parser.parse_args()

    from flowerft.cli.common import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print(f"Error: {NO_GPU}", file=sys.stderr)
        raise SystemExit(2)
    details = tf.config.experimental.get_device_details(gpus[0])
    print(f"GPU: {details.get('device_name', gpus[0].name)} (compute capability {details.get('compute_capability')}), "
          f"{len(gpus)} visible; TensorFlow {tf.__version__}", flush=True)

    from benchmark import make_flowers  # benchmarks/benchmark.py: the same generated flowers

    work = Path(tempfile.mkdtemp(prefix="flowerft-gpu-"))
    try:
        folder = make_flowers(work / "flowers", args.images)
        print(f"{args.images} generated JPEGs in {folder}; Xception at {args.image_size} px, batch {args.batch_size}, "
              f"{args.epochs_head} head + {args.epochs_finetune} fine-tune epochs, --recipe book, --precision auto",
              flush=True)
        for jit in (False, True):
            one_run(folder, work, args, jit)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
