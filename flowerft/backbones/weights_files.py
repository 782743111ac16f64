"""Loading a base's weights from a file a user brings: Keras 3 `.weights.h5` or legacy Keras 2 `.h5`.

Users download Keras 2 files (`xception_weights_tf_dim_ordering_tf_kernels_notop.h5`, what
`weights="imagenet"` fetches) or save Keras 3 ones (`model.save_weights`). A legacy file is
read in its own layout: layer by layer in order when it holds exactly the base's layers (the
'_notop' files), else by layer name (a file with its top, or a whole Keras 2 model's `.h5`),
and then every layer of the base must be in it. A file that fits only in part is an error,
never a base left half at random (Keras itself only warns).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np

from flowerft.errors import ConfigError, first_line

# EfficientNet B0-B7's ImageNet files store the input's standard deviation where the Normalization
# layer reads a variance (tensorflow/tensorflow #49930); Keras corrects it only for weights="imagenet".
EFFICIENTNET_FILE_STDDEV = np.array([0.229, 0.224, 0.225], dtype="float32")


def load(base: keras.Model, path: Path, what: str, hint: str) -> None:
    """Put the weights in `path` into `base`; ConfigError naming `what` the file should hold, and `hint`."""
    try:
        if path.name.endswith(".weights.h5"):
            _load_keras3(base, path)
        elif path.suffix in (".h5", ".hdf5"):
            _load_legacy(base, path)
        else:
            raise ValueError("its name ends neither in .weights.h5 (Keras 3) nor in .h5 (Keras 2)")
    except ConfigError:
        raise
    except Exception as e:  # h5py/keras raise many types for a file that is not these weights
        reason = first_line(e)
        raise ConfigError(f"weights: {path} does not hold {what} ({reason}); {hint}") from None


def _load_keras3(base: keras.Model, path: Path) -> None:
    # Keras only warns when it skips parts of a file that does not fit ("Affected layers will
    # retain their freshly-initialized weights"): a half-loaded base must be an error instead.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base.load_weights(path)
    skipped = [w for w in caught if "freshly-initialized" in str(w.message) or "Skipping" in str(w.message)]
    if skipped:
        raise ValueError(str(skipped[0].message))


def legacy_layer_names(path: Path) -> list[str]:
    """The layers that hold weights in a Keras 2 `.h5` file (a weights file or a whole model's)."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in group.attrs:
            hint = " (a Keras 3 weights file: name it .weights.h5)" if "vars" in group or "layers" in group else ""
            raise ValueError(f"not a Keras 2 weights file: it has no layer_names{hint}")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
        return [n for n in names if len(group[n].attrs.get("weight_names", [])) > 0]


def _load_legacy(base: keras.Model, path: Path) -> None:
    in_file = legacy_layer_names(path)
    weighted = [layer.name for layer in base.layers if layer.weights]
    if len(in_file) == len(weighted):
        base.load_weights(path)  # the '_notop' layout: layer k of the file is weighted layer k of the base
        return
    missing = [name for name in weighted if name not in set(in_file)]
    if missing:
        raise ValueError(
            f"it holds {len(in_file)} layers with weights, the base {len(weighted)}, and lacks "
            f"{missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    base.load_weights(path, by_name=True)  # e.g. a file with its top: the base's layers by name


def fix_efficientnet_normalization(base: keras.Model) -> bool:
    """Turn an EfficientNet ImageNet file's stored std into the variance Normalization divides by.

    What Keras's own `weights="imagenet"` path achieves with an extra Rescaling layer, done in
    the layer's values so that the model keeps Keras's architecture; a base with any other
    statistics (random, or trained by flowerft) is left alone. True if it changed the base.
    """
    for layer in base.layers:
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "adapt_variance", None) is not None:
            variance = np.asarray(layer.adapt_variance.numpy()).reshape(-1)
            if variance.shape == (3,) and np.allclose(variance, EFFICIENTNET_FILE_STDDEV, atol=1e-4):
                layer.adapt_variance.assign(np.square(variance).reshape(layer.adapt_variance.shape))
                layer.finalize_state()
                return True
    return False
