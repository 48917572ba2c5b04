import math

import pytest

from rnnlm.config import Config, all_keys, build_config, load_config
from rnnlm.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "model:\n  hidden_size: 64\n  num_layers: 3\noptim:\n  lr: 0.5\n")
    config = load_config(path, ["model.hidden_size=32", "optim.lr=1e-3"])
    assert config.model.hidden_size == 32  # override beats YAML
    assert config.model.num_layers == 3  # YAML beats default
    assert config.optim.lr == pytest.approx(0.001)  # "1e-3" is a string to YAML 1.1; still a number here
    assert config.model.embed_size == Config().model.embed_size


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key 'model.hiden_size' \(did you mean 'model.hidden_size'\?\)"):
        load_config(None, ["model.hiden_size=3"])


def test_key_in_the_wrong_section_suggests_its_section():
    with pytest.raises(ConfigError, match=r"did you mean 'train.bptt'"):
        load_config(None, ["model.bptt=3"])


def test_unknown_section_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section 'modle' \(did you mean 'model'\?\)"):
        load_config(write(tmp_path, "modle:\n  cell: gru\n"))


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.lr=-1", "model.num_layers=0", "model.cell=transformer", "train.bptt=abc"])
    message = str(info.value)
    for fragment in ("optim.lr must be positive (got -1.0)", "model.num_layers must be at least 1 (got 0)",
                     "model.cell must be one of rnn, gru, lstm, mingru, minlstm (got 'transformer')", "train.bptt must be an integer"):
        assert fragment in message
    assert "\n" not in message


def test_tie_weights_needs_equal_sizes():
    with pytest.raises(ConfigError, match="model.tie_weights needs model.embed_size == model.hidden_size"):
        load_config(None, ["model.tie_weights=true", "model.embed_size=10", "model.hidden_size=20"])


@pytest.mark.parametrize("override,fragment", [
    ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
    ("train.batch_size=0", "train.batch_size must be at least 1"),
    ("model.tie_weights=maybe", "model.tie_weights must be true or false"),
    ("model.hidden_size=12.5", "model.hidden_size must be an integer"),
    ("data.valid_fraction=0.6", "data.valid_fraction + data.test_fraction must be below 1"),
    ("optim.momentum=0.9", "optim.momentum applies to sgd and ntasgd only"),
    ("hidden_size=3", "is not of the form section.key=value"),
])
def test_bad_values_name_their_key(override, fragment):
    extra = ["data.test_fraction=0.5"] if "valid_fraction" in override else []
    extra += ["optim.name=adam"] if "momentum" in override else []
    with pytest.raises(ConfigError) as info:
        load_config(None, [override, *extra])
    assert fragment in str(info.value)


def test_yaml_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_config(write(tmp_path, "model:\n  cell: [lstm\n"))
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_round_trip_through_dict():
    config = load_config(None, ["model.cell=gru", "train.bptt=7"])
    assert build_config(config.to_dict()) == config
    assert len(all_keys()) == sum(len(v) for v in config.to_dict().values())


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_says_how_to_run_it(path):
    config = load_config(path)
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("#") and f"rnnlm train --config configs/{path.name}" in path.read_text()
    assert config.train.epochs > 0 or config.train.max_time  # a recipe says how long: epochs or a time budget


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_trains_and_resumes_at_toy_size(path, tiny_corpus, tmp_path):
    """Each recipe's combination of optimizer, schedule and regularisers runs together: the recipe
    shrunk to a toy model on a toy corpus, 4 steps, then 2 more after a resume."""
    from helpers import train_run
    from rnnlm.checkpoint import load_checkpoint

    recipe = load_config(path)
    shrink = [f"data.corpus={tiny_corpus}", "data.valid_fraction=0.1", "data.test_fraction=0.1",
              "model.embed_size=8", "model.hidden_size=16", "train.batch_size=2", "train.bptt=6",
              "train.eval_batch_size=2", "train.tensorboard=false", "train.device=cpu", "train.eval_every=2",
              "optim.warmup_steps=0"]
    if recipe.model.output_size:
        shrink.append("model.output_size=8")
    for steps in (4, 6):
        config = load_config(path, [*shrink, f"train.max_steps={steps}"])
        _, summary = train_run(config, tmp_path / "run", resume=steps == 6)
        assert summary.steps == steps and math.isfinite(summary.best_val_loss)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["config"]["model"]["cell"] == recipe.model.cell
