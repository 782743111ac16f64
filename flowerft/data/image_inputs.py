"""The images a user names on the command line: files as given, folders expanded to the images in
them, and a Failure for each name that is neither (`predict` and `explain` read them alike)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowerft.data import image_io


@dataclass
class Failure:
    path: str
    message: str


def inputs_in_order(inputs: list[str | Path]) -> list[Path | Failure]:
    """Each input where it stands: a file as given, a folder as the images in it (and its
    subfolders) sorted, and a Failure for an input that names no image."""
    entries: list[Path | Failure] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if image_io.is_image_file(p))
            entries += images or [Failure(str(item), f"{item}: folder has no images ({', '.join(image_io.IMAGE_EXTENSIONS)})")]
        elif item.exists():
            entries.append(item)
        else:
            entries.append(Failure(str(item), f"{item}: no such file or folder"))
    return entries


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[Failure]]:
    """The image files the inputs name, and a Failure for each input that names none."""
    entries = inputs_in_order(inputs)
    return [e for e in entries if isinstance(e, Path)], [e for e in entries if isinstance(e, Failure)]
