"""Which tf.distribute strategy trains a run, and which of its processes writes the run dir.

    none         one device (TensorFlow's default strategy)
    mirrored     MirroredStrategy: one process, every GPU (or every logical CPU device, for tests)
    multiworker  MultiWorkerMirroredStrategy: one process per machine, the cluster from TF_CONFIG
    tpu          TPUStrategy through TPUClusterResolver (TPU_NAME, or the TPU VM's own)
    auto         mirrored when more than one GPU is visible, else none

Every strategy here is synchronous data parallelism: each step, the global batch (--batch-size)
is split across the replicas, their gradients are summed, and every replica applies the same
update. With BatchNorm frozen, that is the same step a single device takes on the whole batch.

In a multi-worker run only the chief writes the run dir (checkpoints, state, metrics,
runs/latest); the other workers train in step with it and write to a temporary folder, the
Keras convention. They read the chief's run dir to resume, so it must be on a file system all
workers share (as a Kubernetes volume or NFS would be).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from flowerft.config import Config
from flowerft.errors import ConfigError, FlowerftError, first_line

# The Keras releases the two multi-worker workarounds below were tested with (the loopback tests
# in tests/test_distribute.py): they reach into Keras's private trainer and build code, which any
# release may change. pyproject.toml pins the same range; this catches an environment that has another.
TESTED_KERAS = ">=3.15,<3.16"

# Errors a collective op raises when another worker died or cannot be reached.
LOST_WORKER_ERRORS = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError, tf.errors.InternalError,
)


def check(config: Config) -> None:
    """What can be checked before a strategy is made."""
    if config.distribute != "multiworker":
        return
    if not config.run_dir:
        raise ConfigError("--distribute multiworker needs --run-dir: every worker must name the same run folder")
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("--distribute multiworker reads the cluster from the TF_CONFIG environment variable, "
                          "which is not set; see the README's 'Distributed training'")
    try:
        cluster = json.loads(os.environ["TF_CONFIG"])
        task = cluster["task"]
        cluster["cluster"][task["type"]][task["index"]]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError("TF_CONFIG must be JSON like {\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}") from None


def make_strategy(mode: str) -> tf.distribute.Strategy:
    """The strategy for `mode`. Call it before any other TensorFlow op: MultiWorkerMirroredStrategy
    configures TensorFlow's collective ops, which is only possible before its runtime starts."""
    if mode == "auto":
        mode = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or cpus])
    if mode == "multiworker":
        _average_scalars_across_workers()
        try:
            return tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
        except (RuntimeError, ValueError) as e:
            raise FlowerftError(f"cannot start multi-worker training: {first_line(e)}") from None
    if mode == "tpu":
        # Not run on TPU hardware by this project's tests (there is none here); see the README.
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise FlowerftError(f"no TPU found ({first_line(e)}); set TPU_NAME or use another --distribute") from None
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"distribute: unknown mode {mode!r}")


def check_keras_version() -> None:
    """Fail in one line, before a Keras internal is patched, when this Keras is not one they were tested with."""
    import keras
    from packaging.specifiers import SpecifierSet

    if keras.__version__ not in SpecifierSet(TESTED_KERAS):
        raise FlowerftError(f"--distribute multiworker works around Keras bugs in its internals, tested with "
                            f"keras{TESTED_KERAS} only, and this is Keras {keras.__version__}: pip install "
                            f"'keras{TESTED_KERAS}', or use --distribute mirrored or none")


def _average_scalars_across_workers() -> None:
    """Let Keras 3's train and test steps reduce their logs across workers.

    Keras reduces each step's per-replica logs with strategy.reduce("MEAN", value, axis=0),
    and across workers a scalar has no axis 0 ("Invalid reduction dimension 0 for input with
    0 dimensions", keras-team/keras #20585, open in 2026). Scalars are averaged over replicas
    instead (axis=None); everything else is left to Keras.
    """
    check_keras_version()
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "averages_scalars", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not trainer._collective_all_reduce_multi_worker(strategy):
            return original(values, strategy, reduction)

        def mean(value):
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=0 if rank else None)

        return tf.nest.map_structure(mean, values)

    reduce_per_replica.averages_scalars = True
    trainer.reduce_per_replica = reduce_per_replica


def local_inference(model):
    """`model(images)` in inference mode, compiled, computed by this process alone.

    For features and activations each worker computes for itself: under
    MultiWorkerMirroredStrategy, predict_on_batch gathers every worker's batch into its result.
    """
    # One trace for every batch: without a signature, tf.function traces the whole network again
    # for each new batch shape (an epoch's short last batch) and for each function made.
    spec = tf.TensorSpec([None, *model.input.shape[1:]], model.input.dtype)
    return tf.function(lambda images: model(images, training=False), input_signature=[spec])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run dir: always, except on a multi-worker run's other workers."""
    return bool(strategy.extended.should_checkpoint)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def describe(strategy: tf.distribute.Strategy) -> str:
    """E.g. 'MultiWorkerMirroredStrategy, 2 replicas'; empty for the default strategy (one device)."""
    # By their public names: MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy.
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "TPUStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            replicas = strategy.num_replicas_in_sync
            return f"{name}, {replicas} replica{'s' if replicas > 1 else ''}"
    return ""


@contextlib.contextmanager
def keras_fit(model, dataset: tf.data.Dataset):
    """Around `model.fit`: a workaround for Keras 3's fit under MultiWorkerMirroredStrategy.

    Keras (3.15, and its main branch in 2026) builds a distributed model before fitting by
    all-reducing the first distributed batch across replicas, which fails across workers
    ("Attempt to convert a value (PerReplica...)", keras-team/keras #20585). Build it here
    from the batch's shapes instead, in the strategy's scope, and let `fit` take its strategy
    from that scope rather than from the model (which is what skips Keras's build).
    """
    strategy = model.distribute_strategy
    if not is_multi_worker(strategy):
        yield
        return
    check_keras_version()
    x_spec, y_spec = dataset.element_spec
    sample = tuple(tf.zeros([1, *spec.shape[1:]], spec.dtype) for spec in (x_spec, y_spec))
    with strategy.scope():
        model._symbolic_build(data_batch=sample)
        model._distribute_strategy = None
        try:
            yield
        finally:
            model._distribute_strategy = strategy


def check_batch(config: Config, strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(
            f"batch_size: the global batch {config.batch_size} does not split evenly across {replicas} replicas; "
            f"use a multiple of {replicas}"
        )


@contextlib.contextmanager
def worker_folder(chief_dir: Path, strategy: tf.distribute.Strategy):
    """Where a non-chief worker writes: one folder per (run, worker), emptied when it starts and removed
    when it ends, so that a worker killed with SIGKILL (nothing cleans up after it) leaves one folder
    behind, which its restart reuses, rather than one more per kill."""
    resolver = strategy.cluster_resolver
    key = hashlib.sha1(os.path.abspath(chief_dir).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"flowerft-{resolver.task_type}{resolver.task_id}-{key}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def worker_copy(chief_dir: Path, folder: Path) -> Path:
    """A non-chief worker's own copy of the chief's run, to resume from in step with it.

    The chief may be finishing its previous commit while this copies (checkpoints.finish_commit
    moves a staged checkpoint), so a file that vanishes mid-copy means: copy again.
    """
    local = folder / (chief_dir.name or "run")
    if not chief_dir.is_dir():
        return local
    skip = shutil.ignore_patterns("train.lock", "cache", "tensorboard", "export", "*.tmp", ".tmp-*")
    for attempt in range(5):
        shutil.rmtree(local, ignore_errors=True)
        try:
            shutil.copytree(chief_dir, local, ignore=skip)
            return local
        except (shutil.Error, FileNotFoundError):
            time.sleep(0.5)
    raise FlowerftError(f"cannot copy {chief_dir} to resume from: it keeps changing; is another trainer writing it?")
