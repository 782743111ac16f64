"""Imbalanced classes: balanced class weights give the same updates on the cached paths as on images,
and a run warns when its largest class has more than 5x the images of its smallest."""

import keras
import numpy as np
import pytest
from helpers import (
    HEAD_KERNEL,
    MOVED,
    assert_differ,
    checkpoint_weights,
    make_image_folder,
    named_weights,
    tiny_base_under_head,
)

from flowerft.config_files import make_config
from flowerft.data import pipelines, sources, splitting
from flowerft.model import build_model
from flowerft.runs import layout
from flowerft.training import class_weights, recipe, session


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20, 10 and 6 images of the three classes: a weighted loss is far from the plain one."""
    root = make_image_folder(tmp_path_factory.mktemp("imbalanced") / "flowers", per_class=20)
    for name, keep in (("dandelion", 10), ("roses", 6)):
        for extra in sorted((root / name).iterdir())[keep:]:
            extra.unlink()
    return root


def config_for(folder, **overrides):
    values = dict(data_dir=str(folder), backbone="mobilenet", weights="none", image_size=32, batch_size=4,
                  shuffle_buffer=8, epochs_head=3, tensorboard=False)
    return make_config(**(values | overrides))


def test_balanced_weights_are_sklearns_inverse_frequency():
    assert class_weights.balanced([12, 6, 2]) == pytest.approx({0: 20 / 36, 1: 20 / 18, 2: 20 / 6})
    assert class_weights.balanced([4, 0, 4]) == {0: 1.0, 2: 1.0}  # a class with no image has no weight


def test_a_run_warns_when_its_largest_class_is_more_than_5x_its_smallest():
    names = ["a", "b", "c"]
    line = class_weights.imbalance_line(names, [700, 88, 44], make_config())
    assert line.startswith("imbalanced classes: a has 700 training images, c 44 (16x)")
    assert "--class-weight balanced and --monitor balanced_accuracy" in line
    assert class_weights.imbalance_line(names, [500, 100, 101], make_config()) is None  # 4.95x: not yet
    chosen = class_weights.imbalance_line(names, [700, 88, 44], make_config(class_weight="balanced",
                                                                          monitor="balanced_accuracy"))
    assert "consider" not in chosen


def head_after_phase(folder, tmp_path, *, cached: bool, weighted: bool):
    config = config_for(folder)
    splits = sources.load(config)
    counts = splitting.class_counts(splits)
    assert counts == [15, 7, 4]  # the split keeps the imbalance
    keras.utils.set_random_seed(0)
    model, base = build_model(config, 3)
    start = named_weights(model)
    run_dir = layout.make_run_dir(tmp_path / f"{'cached' if cached else 'plain'}-{weighted}")
    epoch = pipelines.epoch_variable()
    train_ds = pipelines.pipeline(splits, "train", config, training=True, cache="none", epoch=epoch)
    valid_ds = pipelines.pipeline(splits, "valid", config, cache="none")
    in_order = pipelines.pipeline(splits, "train", config, cache="memory") if cached else None
    data = recipe.Data(train_ds, valid_ds, in_order=in_order, class_weight=class_weights.balanced(counts) if weighted else None)
    recipe.train_head(model, base, data, recipe.Setup(config, run_dir, lambda phase, config: [], epoch))
    return start, named_weights(model)


def test_class_weighted_head_on_cached_features_matches_the_image_path(folder, tmp_path, tiny_backbone):
    start, plain = head_after_phase(folder, tmp_path, cached=False, weighted=True)
    _, cached = head_after_phase(folder, tmp_path, cached=True, weighted=True)
    _, unweighted = head_after_phase(folder, tmp_path, cached=True, weighted=False)
    assert_differ(start, plain, [HEAD_KERNEL], margin=MOVED)  # the head learned
    assert_differ(unweighted, cached, [HEAD_KERNEL], margin=MOVED)  # and the weights changed what it learned
    for name in plain:
        np.testing.assert_allclose(cached[name], plain[name], rtol=1e-4, atol=1e-5, err_msg=name)


def partial_run(folder, run, **values):
    with tiny_base_under_head():
        session.run(config_for(folder, **(dict(run_dir=str(run), epochs_head=1, epochs_finetune=2, lr_finetune=0.05,
                                               finetune_blocks=2, class_weight="balanced") | values)))
    return checkpoint_weights(run)


def test_class_weighted_fine_tune_on_cached_activations_matches_the_image_path(folder, tmp_path):
    plain = partial_run(folder, tmp_path / "plain", cache="none")  # images through the whole model every step
    cached = partial_run(folder, tmp_path / "cached", cache="memory")
    unweighted = partial_run(folder, tmp_path / "unweighted", cache="memory", class_weight="none")
    head = checkpoint_weights(tmp_path / "plain", "head_best")
    assert_differ(head, plain, [HEAD_KERNEL, "block3_conv/kernel"], margin=MOVED)  # fine-tuning moved the top
    assert_differ(unweighted, cached, [HEAD_KERNEL, "block3_conv/kernel"], margin=MOVED)
    for name in plain:
        np.testing.assert_allclose(cached[name], plain[name], rtol=1e-5, atol=1e-6, err_msg=name)
