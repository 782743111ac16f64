"""Which Keras precision policy a run trains in: its `precision`.

    float32   everything in float32
    bfloat16  mixed_bfloat16: compute in bfloat16, weights and the softmax output in float32
    float16   mixed_float16: the same with float16 (Keras scales the loss so gradients do not underflow)
    auto      float16 on a GPU with tensor cores, bfloat16 where the CPU computes it natively
              (avx512_bf16 / amx_bf16, which oneDNN uses), else float32
    mixed     float16 on any GPU, bfloat16 elsewhere, native or not (the older `--mixed-precision`)

bfloat16 on a CPU without native support is emulated and slower than float32; float16 on a
CPU is slower still. The README's Speed section has the measurement behind the default.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from flowerft.config import Config

POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# CPU flags (Linux /proc/cpuinfo) of instructions that compute in bfloat16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Tensor cores (fast float16 matrix products) came with compute capability 7.0 (Volta).
TENSOR_CORE_CAPABILITY = (7, 0)


def cpu_has_native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: assume nothing
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def gpu_has_tensor_cores() -> bool | None:
    """True/False for the first GPU; None when there is no GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    return bool(capability) and tuple(capability) >= TENSOR_CORE_CAPABILITY


def resolve(precision: str) -> str:
    """"auto" made concrete for this machine: float16, bfloat16 or float32."""
    if precision != "auto":
        return precision
    tensor_cores = gpu_has_tensor_cores()
    if tensor_cores is not None:
        return "float16" if tensor_cores else "float32"
    return "bfloat16" if cpu_has_native_bfloat16() else "float32"


def slow_warning(config: Config) -> str | None:
    """A warning when the run's policy is emulated here (measured: bfloat16 fine-tuned ~3x slower than float32)."""
    chosen = policy(config)
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    if chosen == "mixed_bfloat16" and not cpu_has_native_bfloat16():
        what = "bfloat16"
    elif chosen == "mixed_float16":
        what = "float16"
    else:
        return None
    return (f"Warning: this CPU has no native {what} (no {' / '.join(NATIVE_BF16_FLAGS) if what == 'bfloat16' else 'float16 units'}): "
            f"it is emulated, and training is slower than in float32 (about 3x measured); --precision float32 or auto avoids it")


def policy(config: Config) -> str:
    """The Keras global policy name for a run."""
    if config.precision == "mixed":
        import tensorflow as tf

        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    return POLICIES[resolve(config.precision)]


@contextlib.contextmanager
def building_in(policy_name: str):
    """Keras's global policy while layers are built (it is read at construction), then float32 again:
    it is global state, and whatever is built next (an export's float32 copy, the next test) must not inherit it."""
    import keras

    keras.mixed_precision.set_global_policy(policy_name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
