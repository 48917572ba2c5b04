"""Where a training step's time goes: cProfile around the training steps of one of bench.py's presets.

`rnnlm` (the default) profiles `Trainer.fit` with its validations left out of the profile; `plain`
profiles scripts/bench.py's plain loop on the same preset. Prints tokens/s, the functions with the most
time of their own, and the Python calls per training step (measured at two step counts after a short
warm-up run, so set-up cancels out). Run it on both sides, or in two checkouts, to compare them; on a
launch-bound GPU model the calls per step are what a change in Python costs.

    RNNLM_DATA=../shared/corpora python scripts/profile_step.py --preset word --steps 600 --device cuda
    RNNLM_DATA=../shared/corpora python scripts/profile_step.py --preset word --steps 100 --side plain
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (scripts/ is not a package)

from rnnlm.config import load_config  # noqa: E402
from rnnlm.train import Trainer  # noqa: E402


def profile_rnnlm(preset: str, steps: int, device: str) -> tuple[float, pstats.Stats]:
    """Train `steps` steps of `preset` under cProfile, validations not profiled: (tokens/s, stats)."""
    overrides = bench.rnnlm_overrides(dict(bench.PRESETS[preset]), steps, device) + ["train.eval_every=0"]
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="rnnlm-profile-") as folder:
        trainer = Trainer(load_config(None, overrides), Path(folder) / "run", progress=False, log=lambda _: None)
        validate = trainer._validate

        def unprofiled(*args: Any, **kwargs: Any) -> None:  # the final validation is not a training step
            profiler.disable()
            try:
                validate(*args, **kwargs)
            finally:
                profiler.enable()

        trainer._validate = unprofiled  # type: ignore[method-assign]
        try:
            trainer.setup()
            profiler.enable()
            summary = trainer.fit()
            profiler.disable()
        finally:
            trainer.close()
    return summary.tokens_per_sec, pstats.Stats(profiler)


def profile_plain(preset: str, steps: int, device: str) -> tuple[float, pstats.Stats]:
    """bench.py's plain loop for `steps` steps of `preset` under cProfile (its setup not profiled)."""
    spec = dict(bench.PRESETS[preset])
    corpus = bench.load_ids(spec)
    ids = torch.from_numpy(np.asarray(corpus.splits["train"].ids, dtype=np.int64))
    profiler = cProfile.Profile()
    profiler.enable()
    result = bench.plain_round(spec, ids, corpus.tokenizer.vocab_size, steps, torch.device(device))
    profiler.disable()
    return result["tokens"] / result["seconds"], pstats.Stats(profiler)


def total_calls(stats: pstats.Stats) -> int:
    return sum(calls for (_, calls, _, _, _) in stats.stats.values())  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(bench.PRESETS), default="word")
    parser.add_argument("--side", choices=["rnnlm", "plain"], default="rnnlm")
    parser.add_argument("--steps", type=int, default=200, help="training steps in the profiled run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=20, help="how many functions to list")
    args = parser.parse_args()
    profile = profile_rnnlm if args.side == "rnnlm" else profile_plain
    profile(args.preset, 2, args.device)  # first calls (imports, kernel set-up) belong to neither measured run
    speed, stats = profile(args.preset, args.steps, args.device)
    _, shorter = profile(args.preset, args.steps // 2, args.device)
    per_step = (total_calls(stats) - total_calls(shorter)) / (args.steps - args.steps // 2)
    print(
        f"{args.side} {args.preset} on {args.device}: {speed:,.0f} tokens/s under cProfile, "
        f"{per_step:.1f} Python calls a step"
    )
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
