"""Time to quality on ptb-small: wall-clock seconds until the validation perplexity reaches a target.

One side per call, so that the two sides run one after the other on a quiet machine:

    RNNLM_DATA=/work/shared/corpora python scripts/time_to_quality.py plain
    RNNLM_DATA=/work/shared/corpora python scripts/time_to_quality.py rnnlm [--set train.precision=bf16]

Both train the recipe of configs/ptb-small.yaml (Zaremba et al. 2014, small: 2x200 LSTM, bptt 20,
batch 20, every weight ~ U(-0.1, 0.1), SGD lr 1 on the loss summed over the window's time steps,
clipped at 5, halved every epoch after the fourth) on the same token ids, and validate at every
epoch end with batch 20. The target is the paper's validation perplexity, 120.7 (its test perplexity
is 114.5). The clock runs from the first training step and includes the validations: it is the time
a user waits. `plain` is pytorch/examples' word_language_model loop with that recipe; `rnnlm` is the
real Trainer on configs/ptb-small.yaml; its validations run at the training precision (and count on
the clock), and each is scored again in fp32 off the clock, so that both sides' perplexities are
fp32's. At the end each side scores the test split in fp32 with the model of its last epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench import PlainLM, columns, plain_optimizer, plain_step  # scripts/bench.py's plain side (on the path)
from rnnlm.evaluate import perplexity as safe_perplexity  # inf, not OverflowError, for a diverged run

ROOT = Path(__file__).resolve().parent.parent
TARGET = 120.7  # Zaremba et al. 2014, Table 1, small non-regularized LSTM: validation perplexity
BATCH, BPTT, LAYERS, HIDDEN = 20, 20, 2, 200


def plain_perplexity(model: PlainLM, data: torch.Tensor) -> float:
    model.eval()
    shape = (LAYERS, data.size(1), HIDDEN)
    hidden = (torch.zeros(shape), torch.zeros(shape))
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, BPTT):
            length = min(BPTT, data.size(0) - 1 - i)
            output, hidden = model(data[i: i + length], hidden)
            total += nn.functional.cross_entropy(output, data[i + 1: i + 1 + length].reshape(-1),
                                                 reduction="sum").item()
            count += length * data.size(1)
    model.train()
    return safe_perplexity(total / count)


def run_plain(epochs: int) -> dict:
    """pytorch/examples' loop with the Zaremba small recipe."""
    from rnnlm.config import load_config
    from rnnlm.data.corpus import load_corpus

    config = load_config(ROOT / "configs" / "ptb-small.yaml")
    corpus = load_corpus(config.data, config.tokenizer)
    train, valid, test = (columns(torch.from_numpy(np.asarray(corpus.splits[name].ids, dtype=np.int64)), BATCH)
                          for name in ("train", "valid", "test"))
    torch.manual_seed(1234)
    model = PlainLM(corpus.tokenizer.vocab_size, HIDDEN, LAYERS)
    for p in model.parameters():
        nn.init.uniform_(p, -0.1, 0.1)
    criterion, optimizer = nn.CrossEntropyLoss(), plain_optimizer(model, 1.0)
    curve, lr = [], 1.0
    begin = time.perf_counter()
    for epoch in range(1, epochs + 1):
        lr = 1.0 if epoch <= 4 else lr * 0.5
        optimizer.param_groups[0]["lr"] = lr
        shape = (LAYERS, BATCH, HIDDEN)
        hidden = (torch.zeros(shape), torch.zeros(shape))
        for i in range(0, train.size(0) - 1, BPTT):
            length = min(BPTT, train.size(0) - 1 - i)
            _, hidden = plain_step(model, criterion, optimizer, train[i: i + length],
                                   train[i + 1: i + 1 + length].reshape(-1), hidden, clip=5.0,
                                   scale=length)  # the loss summed over time
        perplexity = plain_perplexity(model, valid)
        curve.append({"epoch": epoch, "seconds": time.perf_counter() - begin, "val_ppl": perplexity})
        print(json.dumps(curve[-1]), file=sys.stderr)
    return {"curve": curve, "test_ppl": plain_perplexity(model, test)}


def run_rnnlm(epochs: int, overrides: list[str]) -> dict:
    from rnnlm.config import load_config
    from rnnlm.evaluate import evaluate
    from rnnlm.train import Trainer

    config = load_config(ROOT / "configs" / "ptb-small.yaml", [f"train.epochs={epochs}", "train.tensorboard=false",
                                                                "train.eval_batch_size=20", *overrides])
    curve: list[dict] = []
    clock = {"begin": None, "paused": 0.0}
    holder: dict = {}

    def log(message: str) -> None:  # the Trainer's validation line: "step N | epoch E | val loss X ..."
        found = re.search(r"epoch (\d+) \| val loss ([0-9.]+)", message)
        if not (found and clock["begin"] is not None):
            return
        seconds = time.perf_counter() - clock["begin"] - clock["paused"]
        trainer = holder["trainer"]
        pause = time.perf_counter()  # re-scored in fp32, as the plain side validates, off the clock
        exact = evaluate(trainer.model, trainer.corpus.splits["valid"], boundary_id=trainer.tokenizer.boundary_id,
                         batch_size=BATCH, bptt=BPTT, device=trainer.device)
        clock["paused"] += time.perf_counter() - pause
        curve.append({"epoch": int(found[1]), "seconds": seconds, "val_ppl": exact.ppl,
                      "val_ppl_at_train_precision": safe_perplexity(float(found[2]))})
        print(json.dumps(curve[-1]), file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="rnnlm-ttq-") as folder:
        trainer = holder["trainer"] = Trainer(config, Path(folder) / "run", progress=False, log=log)
        try:
            trainer.setup()  # loading the corpus is not timed on either side
            clock["begin"] = time.perf_counter()
            trainer.fit()
            test = evaluate(trainer.model, trainer.corpus.splits["test"], boundary_id=trainer.tokenizer.boundary_id,
                            batch_size=BATCH, bptt=BPTT, device=trainer.device)  # in fp32
        finally:
            trainer.close()
    return {"curve": curve, "test_ppl": test.ppl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=["plain", "rnnlm"])
    parser.add_argument("--epochs", type=int, default=6, help="epochs to train (the paper's 13 reach the target "
                        "after about 5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an rnnlm config override, e.g. train.precision=bf16")
    args = parser.parse_args()
    result = run_plain(args.epochs) if args.side == "plain" else run_rnnlm(args.epochs, args.overrides)
    reached = next((point for point in result["curve"] if point["val_ppl"] <= TARGET), None)
    result.update(side=args.side, overrides=args.overrides, target_val_ppl=TARGET, threads=torch.get_num_threads(),
                  seconds_to_target=reached and reached["seconds"], epoch_reached=reached and reached["epoch"],
                  date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
