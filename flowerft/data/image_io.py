"""One image, from its file or bytes to uint8 RGB at the model's size: decode and resize, exactly as
every pipeline, `predict`, `serve` and `explain` do it (the same function, so they see the same pixels)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from flowerft.errors import DataError

# Formats tf.io.decode_image reads (whatever the extension says); a GIF gives its first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")



def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 RGB [height, width, 3].

    Grayscale, palette and RGBA images become RGB; an animated GIF gives its first frame.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image



def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Any uint8 RGB image -> uint8 [image_size, image_size, 3], as the book does (no crop).

    Rounding back to uint8 keeps what training sees identical to what `predict` sees and
    lets a pipeline cache images at a quarter of float32's size.
    """
    resized = tf.image.resize(image, [image_size, image_size])
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)



def load_image_file(path: tf.Tensor, image_size: int) -> tf.Tensor:
    return resize_image(decode_image(tf.io.read_file(path)), image_size)



def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS



def read_image(path: str | Path, image_size: int) -> tf.Tensor:
    """One file -> uint8 [image_size, image_size, 3], eagerly, exactly as the pipeline does it.

    Raises DataError naming the file when it is missing, empty or not a readable image.
    """
    path = Path(path)
    try:
        contents = tf.io.read_file(str(path))
        return resize_image(decode_image(contents), image_size)
    except tf.errors.NotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(f"{path}: {_decode_problem(e.message)}") from None
    except tf.errors.PermissionDeniedError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except tf.errors.OpError as e:  # a folder named .jpg, an I/O error, ...
        raise DataError(f"{path}: cannot be read: {e.message.splitlines()[0]}") from None



def image_from_bytes(contents: bytes, image_size: int) -> tf.Tensor:
    """Encoded bytes (an upload, a request's base64) -> uint8 [image_size, image_size, 3], as read_image does.

    Raises DataError with the reason (empty, not an image, corrupt) when they do not decode.
    """
    try:
        return resize_image(decode_image(tf.constant(contents, tf.string)), image_size)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise DataError(_decode_problem(e.message)) from None



def _decode_problem(message: str) -> str:
    if "Input is empty" in message:
        return "the file is empty (0 bytes)"
    if "Unknown image file format" in message:
        return "not an image (JPEG, PNG, GIF, BMP or WebP expected)"
    if "Invalid JPEG data" in message or "Premature end" in message or "truncated" in message.lower():
        return "the image is corrupt or truncated"
    return "cannot be decoded: " + message.split("}}")[-1].strip().splitlines()[0]
