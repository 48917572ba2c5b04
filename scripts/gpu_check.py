"""Checks that need a CUDA GPU, run by hand on a machine that has one (never by CI).

For each cell and implementation: train a small model on the GPU through the real Trainer, then
load its checkpoint on the CPU and check that evaluation there gives the GPU's loss (fp32 kernels
differ in rounding: relative difference below 1e-4) and that sampling works from the checkpoint
alone. Also reports what autocast does to nn.LSTM on this GPU (the dtype cuDNN really runs).

    RNNLM_DATA=/path/to/corpora python scripts/gpu_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rnnlm.checkpoint import load_model
from rnnlm.config import load_config
from rnnlm.data.corpus import load_corpus
from rnnlm.evaluate import evaluate
from rnnlm.sample import generate
from rnnlm.train import Trainer

CASES = [
    ["model.cell=lstm"],
    ["model.cell=gru"],
    ["model.cell=rnn", "model.nonlinearity=relu"],
    ["model.cell=lstm", "model.impl=reference"],
    ["model.cell=lstm", "model.bidirectional=true"],
    ["model.cell=lstm", "model.num_layers=3", "model.output_size=64", "model.embed_size=64",
     "model.tie_weights=true", "model.weight_drop=0.3", "model.locked_dropout=true", "model.dropout=0.2"],
    ["model.cell=mingru"],  # the parallel-scan cells (issue 17): the fused scan, then the paper's layout
    ["model.cell=minlstm", "model.embed_size=128", "model.min_residual=true", "model.min_norm=true", "model.min_mlp=4"],
]
COMMON = ["data.corpus=tinyshakespeare", "tokenizer.kind=char", "model.hidden_size=128", "model.embed_size=64",
          "train.batch_size=32", "train.bptt=64", "train.max_steps=60", "train.epochs=0", "train.eval_batch_size=32",
          "train.tensorboard=false", "optim.name=adam", "optim.lr=0.003", "optim.clip=1", "train.device=cuda"]


def check_case(overrides: list[str], folder: Path) -> dict:
    config = load_config(None, [*COMMON, *overrides])
    trainer = Trainer(config, folder, progress=False, log=lambda m: None)
    trainer.setup()
    summary = trainer.fit()
    trainer.close()
    gpu = summary.last_val.loss
    cpu_loaded = load_model(folder / "last.pt", "cpu")
    valid = load_corpus(config.data, config.tokenizer, cpu_loaded.tokenizer, splits=("valid",)).splits["valid"]
    cpu = evaluate(cpu_loaded.model, valid, boundary_id=cpu_loaded.tokenizer.boundary_id,  # from zero, as validation
                   batch_size=config.train.eval_batch_size, bptt=config.train.bptt, start="zero").loss
    text = generate(cpu_loaded.model, cpu_loaded.tokenizer, prompt="ROMEO:", length=40, seed=1)[0]
    return {"case": " ".join(overrides), "tokens_per_sec": round(summary.tokens_per_sec),
            "val_loss_gpu": gpu, "val_loss_cpu": cpu, "relative_difference": abs(gpu - cpu) / gpu,
            "ok": abs(gpu - cpu) / gpu < 1e-4 and text.startswith("ROMEO:"), "sample": text}


def autocast_dtypes() -> dict:
    """The dtypes nn.LSTM produces under autocast(bfloat16) and autocast(float16) on this GPU."""
    lstm = torch.nn.LSTM(64, 64, 2).cuda()
    x = torch.randn(10, 4, 64, device="cuda")
    found = {}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            out, (h, _) = lstm(x)
        found[str(dtype)] = {"output": str(out.dtype), "hidden": str(h.dtype)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU here")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": [],
               "autocast": autocast_dtypes()}
    with tempfile.TemporaryDirectory() as tmp:
        for i, overrides in enumerate(CASES):
            started = time.perf_counter()
            result = check_case(overrides, Path(tmp) / f"case{i}")
            result["seconds"] = round(time.perf_counter() - started, 1)
            results["cases"].append(result)
            print(json.dumps(result), flush=True)
    print(json.dumps(results["autocast"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if not all(case["ok"] for case in results["cases"]):
        sys.exit("some GPU checks failed")


if __name__ == "__main__":
    main()
