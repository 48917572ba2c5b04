"""Where a training step's time goes: cProfile around `Trainer.fit` on one of bench.py's presets.

Prints tokens/s, the functions with the most time of their own, and the Python calls per training step
(measured at two step counts after a short warm-up run, so set-up and the final validation cancel out).
Run it in two checkouts to compare them; on a launch-bound GPU model the calls per step are what a change
in Python costs.

    RNNLM_DATA=../shared/corpora python scripts/profile_step.py --preset word --steps 600 --device cuda
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (scripts/ is not a package)

from rnnlm.config import load_config  # noqa: E402
from rnnlm.train import Trainer  # noqa: E402


def profile(preset: str, steps: int, device: str) -> tuple[float, pstats.Stats]:
    """Train `steps` steps of `preset` (no validation until the end) under cProfile: (tokens/s, stats)."""
    overrides = bench.rnnlm_overrides(dict(bench.PRESETS[preset]), steps, device) + ["train.eval_every=0"]
    with tempfile.TemporaryDirectory(prefix="rnnlm-profile-") as folder:
        trainer = Trainer(load_config(None, overrides), Path(folder) / "run", progress=False, log=lambda _: None)
        try:
            trainer.setup()
            profiler = cProfile.Profile()
            profiler.enable()
            summary = trainer.fit()
            profiler.disable()
        finally:
            trainer.close()
    return summary.tokens_per_sec, pstats.Stats(profiler)


def total_calls(stats: pstats.Stats) -> int:
    return sum(calls for (_, calls, _, _, _) in stats.stats.values())  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(bench.PRESETS), default="word")
    parser.add_argument("--steps", type=int, default=200, help="training steps in the profiled run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--top", type=int, default=20, help="how many functions to list")
    args = parser.parse_args()
    profile(args.preset, 2, args.device)  # first calls (imports, kernel set-up) belong to neither measured run
    speed, stats = profile(args.preset, args.steps, args.device)
    _, shorter = profile(args.preset, args.steps // 2, args.device)
    per_step = (total_calls(stats) - total_calls(shorter)) / (args.steps - args.steps // 2)
    print(f"{args.preset} on {args.device}: {speed:,.0f} tokens/s under cProfile, {per_step:.1f} Python calls a step")
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
