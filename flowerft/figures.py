"""PNG figures with matplotlib: no display needed, and written atomically like every other file."""

from __future__ import annotations

import warnings
from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Save `fig` as PNG under a temporary name, rename it into place, and close it."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        # Class names in scripts the installed fonts lack (CJK, say) are drawn as boxes: the
        # numbers are what matters, so matplotlib's "Glyph ... missing" warnings are not shown.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
            fig.tight_layout()
            fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
