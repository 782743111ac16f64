from pathlib import Path

import pytest
import yaml

from flowerft.config import DEFAULTS, RECIPES, Config, to_dict
from flowerft.config_files import make_config
from flowerft.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_flowerft_recipe():
    c = Config()
    assert c.recipe == "flowerft" and RECIPES["flowerft"] == {}  # the dataclass is the default recipe
    assert (c.backbone, c.weights, c.image_size, c.batch_size, c.shuffle_buffer) == ("xception", "imagenet", 224, 32, 1000)
    assert (c.epochs_head, c.epochs_finetune, c.momentum) == (5, 10, 0.9)
    assert (c.lr_head, c.decay_head, c.lr_finetune, c.decay_finetune) == (0.02, 0.01, 0.001, 0.001)
    assert (c.schedule, c.warmup_epochs, c.label_smoothing, c.clipnorm) == ("inverse_time", 0.0, 0.0, 1.0)
    assert (c.test_percent, c.valid_percent, c.tfds_name) == (10, 15, "tf_flowers:3.0.1")


def test_the_book_recipe_is_gerons_values():
    c = make_config(recipe="book")
    assert c.recipe == "book"
    assert (c.epochs_head, c.lr_head, c.decay_head) == (5, 0.2, 0.01)
    assert (c.epochs_finetune, c.lr_finetune, c.decay_finetune, c.momentum) == (10, 0.01, 0.001, 0.9)
    assert (c.schedule, c.warmup_epochs, c.label_smoothing, c.clipnorm) == ("inverse_time", 0.0, 0.0, None)


def test_a_recipe_sits_between_the_defaults_and_the_yaml_file_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: book\nlr_finetune: 0.002\n")
    c = make_config(path, clipnorm=1.0)
    assert (c.recipe, c.lr_head, c.lr_finetune, c.clipnorm) == ("book", 0.2, 0.002, 1.0)
    # A flag names another recipe: the file's own values still override it.
    c = make_config(path, recipe="flowerft")
    assert (c.recipe, c.lr_head, c.lr_finetune, c.clipnorm) == ("flowerft", 0.02, 0.002, 1.0)


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="recipe: must be one of flowerft, book, got 'geron'"):
        make_config(recipe="geron")


def test_every_shipped_config_is_a_real_variant_and_names_its_command():
    # Defaults live in the dataclass and recipes in RECIPES (`--recipe`, `train --show-config`):
    # a shipped file that only restated one of them would be a second home for its values.
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        assert path.read_text().startswith(f"# flowerft train --config configs/{path.name}"), path.name
        written = yaml.safe_load(path.read_text())
        assert make_config(path) != make_config(recipe=written.get("recipe", "flowerft")), path.name


def test_every_shipped_config_gives_the_values_it_writes():
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        written = yaml.safe_load(path.read_text())
        config = make_config(path)
        for key, value in written.items():
            assert getattr(config, key) == value, f"{path.name}: {key}"
        # and what it does not write comes from its recipe, else from the defaults
        recipe = RECIPES[written.get("recipe", "flowerft")]
        for key, default in DEFAULTS.items():
            if key not in written:
                assert getattr(config, key) == recipe.get(key, default), f"{path.name}: {key}"


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs_head: 2\nlr_head: 0.05\nbackbone: mobilenet\n")
    c = make_config(path, epochs_head=7, lr_finetune=None)
    assert (c.epochs_head, c.lr_head, c.backbone, c.lr_finetune) == (7, 0.05, "mobilenet", DEFAULTS["lr_finetune"])


def test_ints_are_accepted_for_floats_and_stored_as_floats():
    c = make_config(lr_head=1, clipnorm=1)
    assert isinstance(c.lr_head, float) and isinstance(c.clipnorm, float)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    c = make_config(epochs_head=3, clipnorm=1.0, data_dir="x")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(c)))
    assert make_config(path) == c


@pytest.mark.parametrize(
    "values, key",
    [
        ({"epochs_head": -1}, "epochs_head"),
        ({"epochs_finetune": -3}, "epochs_finetune"),
        ({"image_size": 70}, "image_size"),  # Xception needs 71
        ({"backbone": "vgg99"}, "backbone"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr_head": 0}, "lr_head"),
        ({"momentum": 1.0}, "momentum"),
        ({"clipnorm": -1.0}, "clipnorm"),
        ({"epochs_head": "five"}, "epochs_head"),
        ({"epochs_head": 2.5}, "epochs_head"),
        ({"tensorboard": 1}, "tensorboard"),
        ({"image_size": True}, "image_size"),
        ({"test_percent": 50, "valid_percent": 50}, "valid_percent"),
        ({"cache": "disk"}, "cache"),
        ({"augment": "yes"}, "augment"),
        ({"augment": "basic+flip"}, "augment"),
        ({"augment": "mixup+cutmix"}, "augment"),  # one way of mixing images and labels
        ({"augment": "basic+basic"}, "augment"),
        ({"augment": "none+basic"}, "augment"),
        ({"augment": ""}, "augment"),
        ({"augment": 1}, "augment"),
        ({"ema": "yes"}, "ema"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"ema_momentum": -0.1}, "ema_momentum"),
        ({"ema": True, "micro_batch": 8, "weights": "imagenet"}, "ema"),  # Keras's EMA would count micro-batches
        ({"recipe": ["book"]}, "recipe"),
        ({"schedule": "linear"}, "schedule"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 1.0}, "warmup_epochs"),  # the default inverse_time schedule has no warm-up
        ({"warmup_epochs": float("inf"), "schedule": "cosine"}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        make_config(**values)


def test_image_size_minimum_depends_on_backbone():
    assert make_config(backbone="mobilenet", image_size=32).image_size == 32
    with pytest.raises(ConfigError, match="at least 71"):
        make_config(image_size=32)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs_head: 1\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="^learning_rate: unknown config key"):
        make_config(path)


@pytest.mark.parametrize(
    "text, message",
    [("epochs_head: [1\n", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        make_config(path)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_config(tmp_path / "nope.yaml")


def test_yaml_cannot_run_code(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        make_config(path)


def test_clipnorm_zero_means_no_clipping_spelled_one_way():
    assert make_config(clipnorm=0).clipnorm is None and make_config(recipe="book").clipnorm is None


def test_a_run_recorded_with_the_old_mixed_precision_switch_still_loads_evaluates_and_resumes(tmp_path):
    """Runs trained before `precision: mixed` recorded `mixed_precision: true` beside `precision`:
    they keep the policy they trained in, whether opened for evaluation or resumed."""
    from flowerft import precision
    from flowerft.config_files import given_values
    from flowerft.runs import layout, loader
    from flowerft.training import session

    def old_run(name, **values):
        run_dir = tmp_path / name
        run_dir.mkdir()
        recorded = to_dict(make_config(backbone="mobilenet", image_size=32)) | values | {"run_dir": str(run_dir)}
        layout.write_yaml(run_dir / layout.CONFIG, recorded)
        return run_dir

    mixed = old_run("mixed", precision="float32", mixed_precision=True)
    config = loader.run_config(mixed)  # as evaluate, predict, export and report open a run
    assert config.precision == "mixed" and precision.policy(config) == "mixed_bfloat16"  # no GPU here
    resumed = session.resumed_config(mixed, make_config(run_dir=str(mixed)), given={"run_dir": str(mixed)})
    assert resumed == config
    # `--mixed-precision` given again on resume is the run's own option, not a different one.
    again = given_values(mixed_precision=True, run_dir=str(mixed))
    assert session.resumed_config(mixed, make_config(**again), given=again).precision == "mixed"
    # A named type won over the switch, and a switch left off changed nothing: both still hold.
    named = loader.run_config(old_run("named", precision="float16", mixed_precision=True))
    assert named.precision == "float16" and precision.policy(named) == "mixed_float16"
    auto = loader.run_config(old_run("auto", precision="auto", mixed_precision=True))
    assert auto.precision == "mixed"
    off = loader.run_config(old_run("off", precision="float32", mixed_precision=False))
    assert off.precision == "float32" and precision.policy(off) == "float32"
    assert "mixed_precision" not in to_dict(off)  # a new run records precision alone
    with pytest.raises(ConfigError, match="^mixed_precision: expected bool"):
        make_config(mixed_precision="yes")


def test_regularisers_are_off_by_default_and_augment_policies_have_one_spelling():
    c = Config()
    assert (c.augment, c.ema, c.ema_momentum) == ("none", False, 0.99)
    assert make_config(augment="mixup+basic").augment == "basic+mixup"  # applied in AUGMENTATIONS' order
    assert make_config(augment="cutmix+randaugment+basic").augment == "basic+randaugment+cutmix"
    for policy in ("basic", "randaugment", "mixup", "cutmix", "randaugment+mixup"):
        assert make_config(augment=policy).augment == policy
    assert make_config(ema=True, ema_momentum=0).ema_momentum == 0.0


def test_a_run_recorded_with_the_old_augment_switch_still_loads_and_resumes(tmp_path):
    """Runs trained before `augment` named a policy recorded `augment: true/false`: true was today's
    basic (flips, rotations, zooms), false is none, whether opened for evaluation or resumed."""
    from flowerft.config_files import given_values
    from flowerft.runs import layout, loader
    from flowerft.training import session

    def old_run(name, augment):
        run_dir = tmp_path / name
        run_dir.mkdir()
        recorded = to_dict(make_config(backbone="mobilenet", image_size=32)) | {"augment": augment}
        recorded["run_dir"] = str(run_dir)
        layout.write_yaml(run_dir / layout.CONFIG, recorded)
        assert f"augment: {str(augment).lower()}" in (run_dir / layout.CONFIG).read_text()
        return run_dir

    for old, policy in ((True, "basic"), (False, "none")):
        run = old_run(str(old), old)
        config = loader.run_config(run)  # as evaluate, predict, export and report open a run
        assert config.augment == policy
        assert session.resumed_config(run, make_config(run_dir=str(run)), given={"run_dir": str(run)}) == config
        # The old switch given again on resume (an old command re-issued) is the run's own option.
        again = given_values(augment=old, run_dir=str(run))
        assert session.resumed_config(run, make_config(**again), given=again) == config
        other = given_values(augment="basic" if not old else "none", run_dir=str(run))
        with pytest.raises(Exception, match=f"trained with augment='{policy}'"):
            session.resumed_config(run, make_config(**other), given=other)
    path = tmp_path / "old.yaml"
    path.write_text("augment: true\n")
    assert make_config(path).augment == "basic"
