"""Resume policy: which settings a resumed run may change and what each change does to what it computes,
and how a checkpoint's saved config is read (keys it predates get the value it was trained with)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rnnlm.config import Config, build_config, flatten, load_config, read_yaml
from rnnlm.errors import ConfigError

# What changing a key on --resume does to the run's numbers:
#   nothing     the same weights and losses, bit for bit
#   rounding    the same computation in another order or precision: the losses agree to rounding
#   schedule    the same steps, but decisions taken on validations or on the run's length (the plateau
#               schedule's decays, NT-ASGD's start, best.pt, the cosine schedule's length) may change
Effect = Literal["nothing", "rounding", "schedule"]


@dataclass(frozen=True)
class Resumable:
    effect: Effect
    why: str


# Every key that may differ between a run and its resumption; any other change is refused, since it would
# make the checkpoint's state (weights, optimizer, batches) that of another run.
RESUMABLE: dict[str, Resumable] = {
    "train.epochs": Resumable(
        "schedule", "where the run stops; with optim.schedule cosine also the length the rate decays over"
    ),
    "train.max_steps": Resumable(
        "schedule",
        "where the run stops; with optim.schedule cosine also the length the "
        "rate decays over, so the rate from the resumed step on is the new "
        "schedule's",
    ),
    "train.max_time": Resumable(
        "schedule",
        "where the run stops (the time spent before the resume counts); with optim.schedule cosine also the "
        "time the rate decays over, so from the resumed step on the rate is the new budget's",
    ),
    "train.eval_every": Resumable(
        "schedule",
        "when validation runs, and so when the plateau schedule may decay, "
        "NT-ASGD may start averaging and best.pt is chosen",
    ),
    "train.eval_batch_size": Resumable(
        "schedule",
        "the validation loss itself (streams start afresh at other "
        "places), which the plateau schedule, NT-ASGD and best.pt "
        "decide on",
    ),
    "train.precision": Resumable(
        "rounding",
        "the forward pass's precision: bf16 and fp16 round far more than "
        "fp32 (the losses follow fp32's closely, not bit for bit); the "
        "validations it feeds the schedule round with them",
    ),
    "train.device": Resumable("rounding", "another device runs the same operations in another order"),
    "model.loss_chunk": Resumable("rounding", "the loss is summed over other pieces of the logits"),
    "model.fused_loss": Resumable("rounding", "the loss is computed by other kernels"),
    "train.log_every": Resumable(
        "nothing", "how often the loss is read back and logged (the divergence check judges means over this many steps)"
    ),
    "train.num_threads": Resumable("nothing", "how many CPU threads torch uses"),
    "train.tensorboard": Resumable("nothing", "whether TensorBoard events are written"),
    "train.dist_timeout": Resumable("nothing", "how long a distributed collective may wait"),
    "data.cache_dir": Resumable("nothing", "where token ids are cached (they are verified on every read)"),
    "model.init_embeddings": Resumable(
        "nothing", "only where a fresh run's embedding starts: a resumed run's weights are the checkpoint's"
    ),
}
RESUMABLE_KEYS = frozenset(RESUMABLE)


# Keys added after checkpoints were first written, with the value that reproduces what a run saved
# before them computed: a saved config without the key gets this, not today's default.
LEGACY_DEFAULTS = {"model.adaptive_cluster_grad": 1.0}


def saved_config(values: Any) -> Config:
    """The Config a checkpoint saved, the keys it predates set to their old behaviour. `values` is whatever
    the checkpoint holds there: a nested dict, unless the file is damaged."""
    if not isinstance(values, dict):
        return build_config(values)  # reports what is wrong with it
    values = {section: dict(v) if isinstance(v, dict) else v for section, v in values.items()}
    for key, old in LEGACY_DEFAULTS.items():
        section, _, name = key.partition(".")
        if isinstance(values.get(section), dict):
            values[section].setdefault(name, old)
    return build_config(values)


def resume_config(saved: Config, requested: dict[str, Any]) -> Config:
    """The saved run's config with only RESUMABLE keys changed; any other change is refused, all in one error."""
    current = flatten(saved.to_dict())
    refused = [
        f"{key} (run has {current[key]!r}, asked for {value!r})"
        for key, value in requested.items()
        if key in current and current[key] != value and key not in RESUMABLE
    ]
    if refused:
        raise ConfigError(
            "cannot change these settings when resuming a run: "
            + "; ".join(refused)
            + " (only "
            + ", ".join(sorted(RESUMABLE))
            + " may change)"
        )
    changes = {k: v for k, v in requested.items() if k in RESUMABLE and current.get(k) != v}
    return saved.replace(changes) if changes else saved


def requested_changes(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The validated values of only those keys the YAML file and the overrides mention."""
    config = flatten(load_config(path, overrides).to_dict())
    mentioned = {o.partition("=")[0].strip() for o in overrides}
    if path is not None:
        mentioned |= {f"{s}.{k}" for s, values in read_yaml(path).items() if isinstance(values, dict) for k in values}
    return {key: config[key] for key in mentioned if key in config}
