"""The default recipe's promise, on real weights and real images: fine-tuning beats the head.

Marked `large` (run with `pytest -m large`): it trains Xception with ImageNet weights for a few
minutes on a slice of the dev kit that `../shared/devkit/setup.sh` builds (DEVKIT, default
~/.cache/flowerft-devkit), and skips with the reason when the kit is not there.
"""

import os
from pathlib import Path

import pytest

DEVKIT = Path(os.environ.get("DEVKIT", Path.home() / ".cache" / "flowerft-devkit"))
WEIGHTS = DEVKIT / "weights" / "xception_imagenet_notop.weights.h5"
IMAGES = DEVKIT / "shoes5"
PER_CLASS = 200  # 1,000 images: 750 train, 150 valid, 100 test


def devkit_slice(target: Path) -> Path:
    """The first PER_CLASS images of each dev-kit class, linked (not copied) into `target`."""
    for folder in sorted(p for p in IMAGES.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            (target / folder.name / image.name).symlink_to(image)
    return target


@pytest.mark.large
@pytest.mark.skipif(not (WEIGHTS.is_file() and IMAGES.is_dir()),
                    reason=f"no dev kit at {DEVKIT}: run `PY=.venv/bin/python bash ../shared/devkit/setup.sh`")
def test_the_default_recipe_fine_tunes_past_the_head_on_real_images(tmp_path):
    from flowerft.config_files import make_config
    from flowerft.reporting.evaluate import predict_split
    from flowerft.training import session

    config = make_config(
        data_dir=str(devkit_slice(tmp_path / "images")), weights=str(WEIGHTS), image_size=96,
        epochs_head=3, epochs_finetune=3, seed=1, run_dir=str(tmp_path / "run"), tensorboard=False,
    )
    assert config.recipe == "flowerft"
    result = session.run(config)
    phases = result.metrics["phases"]
    assert phases["finetune"]["stopped_because"] is None and phases["finetune"]["epochs_run"] == 3

    def test_accuracy(phase):
        probabilities, labels, _ = predict_split(result.run_dir, result.run_dir / phases[phase]["checkpoint"], "test")
        return (probabilities.argmax(axis=1) == labels).mean()

    head, tuned = test_accuracy("head"), test_accuracy("finetune")
    print(f"test accuracy: head only {head:.1%}, fine-tuned {tuned:.1%}")
    assert tuned > head
    assert result.metrics["best_phase"] == "finetune"
