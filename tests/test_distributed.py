"""Data-parallel training under torchrun, on CPU with gloo: 2 processes with batch B train the model
one process trains with batch 2B (to float32 rounding: parameters allclose within 1e-5), only rank
0 writes, resume works, and a hung rank becomes an error instead of a hang."""

import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import TINY_MODEL
from rnnlm.checkpoint import load_checkpoint

COMMON = [*TINY_MODEL, "model.num_layers=2", "train.bptt=8", "train.epochs=0", "train.tensorboard=false",
          "data.valid_fraction=0.1", "data.test_fraction=0.1", "optim.schedule=constant", "optim.lr=2",
          "train.eval_every=4", "train.log_every=2", "train.dist_timeout=30"]


def rnnlm(*args, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "rnnlm"] if processes > 1 else [sys.executable, "-m", "rnnlm"]
    result = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=90,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return result


@pytest.fixture
def corpus(tiny_corpus, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(tiny_corpus.read_text() * 4)
    return path


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains_with_twice_the_batch(corpus, tmp_path):
    one = rnnlm("train", "--run-dir", tmp_path / "one", f"data.corpus={corpus}", *COMMON,
                "train.batch_size=8", "train.max_steps=12")
    assert one.returncode == 0, one.stderr
    first = rnnlm("train", "--run-dir", tmp_path / "two", f"data.corpus={corpus}", *COMMON,
                  "train.batch_size=4", "train.max_steps=6", processes=2)
    assert first.returncode == 0, first.stderr
    saved = load_checkpoint(tmp_path / "two" / "last.pt")
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2
    assert not torch.equal(saved["ranks"][0]["hidden"][0], saved["ranks"][1]["hidden"][0])  # own columns each
    assert first.stderr.count("val loss") == 2  # steps 4 and 6, logged once (rank 0), not once per rank
    assert first.stderr.count("Done: 6 steps") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".lock", "best.pt", "config.yaml", "last.pt",
                                                                  "run_id"]

    resumed = rnnlm("train", "--resume", tmp_path / "two", "train.max_steps=12", processes=2)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)

    alone = rnnlm("train", "--resume", tmp_path / "two", "train.max_steps=14")
    assert alone.returncode == 2 and "trained by 2 process(es)" in alone.stderr and "Traceback" not in alone.stderr


# A loaded machine can take tens of seconds to start two spawned workers; what the test needs is that the
# error comes from the 3 s timeout, long before the hanging rank would wake up and end the wait by itself.
HANG_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, corpus: str, run_dir: str, results: "multiprocessing.Queue") -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from rnnlm.config import load_config
    from rnnlm.errors import RnnlmError
    from rnnlm.train import Trainer
    if rank == 1:  # this rank hangs inside its third step, far longer than train.dist_timeout
        original = Trainer._train_step
        def hang(self, inputs, targets):
            if self.step == 2:
                time.sleep(HANG_SECONDS)
            return original(self, inputs, targets)
        Trainer._train_step = hang
    config = load_config(None, [f"data.corpus={corpus}", *COMMON, "train.batch_size=4", "train.max_steps=50",
                                "train.dist_timeout=3", "train.eval_every=0"])
    started = time.monotonic()
    try:
        trainer = Trainer(config, run_dir, progress=False, log=lambda m: None)
        trainer.setup()
        trainer.fit()
        results.put((rank, "finished", time.monotonic() - started))
    except RnnlmError as exc:
        results.put((rank, str(exc), time.monotonic() - started))


@pytest.mark.slow
def test_a_hung_rank_becomes_an_error_on_the_others(corpus, tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_worker, args=(r, port, str(corpus), str(tmp_path / "run"), results))
               for r in (0, 1)]
    for w in workers:
        w.start()
    rank, message, seconds = results.get(timeout=HANG_SECONDS - 30)
    for w in workers:
        w.kill()
        w.join()
    assert rank == 0
    assert "rank 0 of 2: distributed training stopped" in message and "train.dist_timeout = 3 s" in message
    assert seconds < HANG_SECONDS - 30  # the timeout ended the wait, not the hanging rank waking up
