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


def expand_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[Failure]]:
    """Files stay as given; a folder becomes the images in it (and its subfolders), sorted."""
    files, failures = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if image_io.is_image_file(p))
            if images:
                files += images
            else:
                failures.append(Failure(str(item), f"{item}: folder has no images ({', '.join(image_io.IMAGE_EXTENSIONS)})"))
        elif item.exists():
            files.append(item)
        else:
            failures.append(Failure(str(item), f"{item}: no such file or folder"))
    return files, failures
