"""`--weights none` trains from scratch: BatchNorm learns its statistics and the whole network trains
from the first epoch (a frozen random base passes almost no signal, so the old recipe stayed at chance)."""

import keras
import numpy as np
import pytest
from helpers import make_image, make_image_folder

from flowerft.config_files import make_config
from flowerft.errors import ConfigError
from flowerft.training import session


def test_a_from_scratch_run_learns_an_easy_task_above_chance(tmp_path):
    folder = make_image_folder(tmp_path / "flowers", per_class=30, sizes=(32, 40))
    config = make_config(data_dir=str(folder), weights="none", backbone="mobilenet", image_size=32, batch_size=8,
                         epochs_finetune=12, run_dir=str(tmp_path / "run"), runs_root=str(tmp_path / "runs"),
                         tensorboard=False)
    assert config.epochs_head == 0  # no head phase on random frozen features
    said = []
    result = session.run(config, notify=said.append)
    assert any("from scratch, the whole network and its BatchNorm learn" in line for line in said), said
    # Images the run never saw, predicted by the saved best model in inference mode (as `predict` does).
    rng = np.random.default_rng(7)
    labels = np.arange(60) % 3
    images = np.stack([np.asarray(make_image(rng, int(label), (32, 32)), dtype="float32") for label in labels])
    model = keras.saving.load_model(tmp_path / "run" / result.metrics["best_checkpoint"], compile=False)
    accuracy = float((model.predict(images, verbose=0).argmax(axis=1) == labels).mean())
    assert accuracy > 0.6, accuracy  # chance is 1/3


def test_the_plan_follows_the_weights_and_what_the_user_gives_wins():
    assert make_config(weights="none").epochs_head == 0
    assert make_config(weights="none", epochs_head=2).epochs_head == 2
    assert make_config().epochs_head == 5  # pretrained: the head phase first
    with pytest.raises(ConfigError, match="micro_batch: matches whole batches only with pretrained weights"):
        make_config(weights="none", batch_size=8, micro_batch=4)
