"""`Trainer`: stateful truncated BPTT with cross-entropy, clipping, schedules, validation and checkpoints.

The stages, in the order a run goes through them and this file reads:
  build     `setup`: take the run folder (lock, tidy, prepare), build data, model and optimizer
  restore   from `last.pt` when resuming, before anything is written
  the step  `fit` -> `_run_epoch` -> `_train_step`, one optimizer step per BPTT window
  validate  `_validate`: score the validation split, feed the schedule, keep the best
  save      `save`: checkpoints written atomically, holding every rank's state
  stop      at the end, on a signal, a non-finite or diverged loss; `close` releases what `setup` took
Constructing a Trainer changes nothing: the run folder is taken in `setup`, so whatever fails before
it leaves nothing to undo, and `close` undoes what `setup` did, however far it got.
A first SIGINT/SIGTERM finishes the current step, saves and stops; a second stops at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from rnnlm import distributed, runtime
from rnnlm.checkpoint import save_checkpoint
from rnnlm.config import Config, dump_yaml, parse_duration
from rnnlm.data.batching import TrainBatches
from rnnlm.data.corpus import load_corpus
from rnnlm.data.tokenizers import from_state
from rnnlm.embeddings import init_embeddings
from rnnlm.errors import CheckpointError, DataError, Interrupted, TrainingError, UsageError
from rnnlm.evaluate import evaluate, perplexity
from rnnlm.inspect import log_inside
from rnnlm.metrics import open_writer
from rnnlm.models import LanguageModel, build_model
from rnnlm.models.lm import detach_state
from rnnlm.models.stack import State
from rnnlm.optim import Averager, Schedule, build_optimizer
from rnnlm.runs import RunFolder, changed_splits, describe_changes, split_fingerprint
from rnnlm.runtime import StopSignals
from rnnlm.training_state import Meter, TrainState, TrainSummary
from rnnlm.warmstart import start_states

__all__ = ["Trainer", "TrainSummary", "TrainState", "DIVERGED_MARGIN", "DIVERGED_LOG_POINTS"]

# A diverged run: its loss stays far above that of guessing uniformly (ln V nats per token). An untrained
# model starts near ln V and any learning run stays below it, with passing spikes; twice ln V means the
# model puts on the true token a probability V times smaller than a uniform guess would, and the margin
# keeps small vocabularies (ln 30 = 3.4) from tripping on an early spike. The training loss must stay
# above the limit for DIVERGED_LOG_POINTS log points in a row (each a mean over log_every steps);
# a validation above it (a mean over the whole split) stops the run at once.
DIVERGED_MARGIN = 5.0  # nats
DIVERGED_LOG_POINTS = 3


class Trainer:
    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        resume_from: dict[str, Any] | None = None,
        overwrite: bool = False,
        allow_data_change: bool = False,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`resume_from` is the payload of the run's last.pt, when continuing it; `clock` (seconds) measures
        train.max_time, a fake one in tests. Nothing happens yet."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.saved = resume_from
        self.resume = resume_from is not None
        self.overwrite = overwrite
        self.allow_data_change = allow_data_change
        self.show_progress = progress
        self._log = log
        self.log: Callable[[str], None] = lambda _: None  # until `setup` knows whether this rank speaks
        self.folder = RunFolder(self.run_dir)
        self.run = TrainState()
        self.run_id: str | None = None
        self.clock = clock
        self.budget = parse_duration(config.train.max_time)  # seconds; 0: no limit
        self._fit_start = 0.0

    # -- build ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Take the run folder, build everything, restore a resumed run; then write its config and id."""
        c = self.config
        self._take_folder()
        runtime.configure_threads(c.train.num_threads)
        runtime.seed_everything(c.train.seed)
        saved, self.saved = self.saved, None
        self._build_data(saved)
        self._build_model()
        if saved:
            self._restore_checked(saved)
        self.run.start_step = self.run.step
        if self.group.is_main:
            assert self.run_id is not None  # rank 0 took it with the folder
            dump_yaml(c, self.run_dir / "config.yaml")
            self.folder.write_id(self.run_id)
        # a resumed run logs again the steps after its checkpoint, which a crash may have logged already
        self.writer = open_writer(
            self.run_dir,
            c.train.tensorboard and self.group.is_main,
            purge_step=self.run.step + 1 if self.resume else None,
        )
        self.log(self._describe())

    def _take_folder(self) -> None:
        """Join the ranks; rank 0 locks the run folder before it changes anything there, and holds it until
        `close`. A failure (Ctrl-C included) puts back a run being replaced and frees the folder."""
        self.group, self.device = distributed.join(self.config.train.device, self.config.train.dist_timeout)
        main = self.group.is_main  # only rank 0 writes files, logs and shows progress
        self.show_progress = self.show_progress if main else False
        if main:
            self.log = self._log or (lambda message: tqdm.write(message, file=sys.stderr))
        try:
            if main:
                self.folder.lock()
                for note in self.folder.tidy():
                    self.log(note)
                self.run_id = self.folder.run_id(self.saved)
            for note in self.folder.prepare(resume=self.resume, overwrite=self.overwrite, modify=main):
                self.log(note)
            self.group.barrier()
        except BaseException:
            self.folder.rollback()
            self.folder.release()
            raise

    def _build_data(self, saved: dict[str, Any] | None) -> None:
        """The corpus (all splits: bad text shows up now), checked against a resumed run's, and its batches."""
        c, g = self.config, self.group
        tokenizer = from_state(saved["tokenizer"]) if saved else None
        self.corpus = load_corpus(c.data, c.tokenizer, tokenizer, log=self.log)
        self.tokenizer = self.corpus.tokenizer
        self.fingerprints = self._check_data(saved)
        train = self.corpus.splits["train"]
        self.batches = TrainBatches(
            train.ids,
            c.train.batch_size,
            c.train.bptt,
            g.rank,
            g.world_size,
            variable=c.train.variable_bptt,
            seed=c.train.seed,
        )
        if len(self.batches) == 0 or self.batches.rows < c.train.bptt + 1:
            need = g.world_size * c.train.batch_size * (c.train.bptt + 1)
            processes = f"{g.world_size} processes x " if g.enabled else ""
            raise DataError(
                f"the training split has {len(train.ids):,} tokens; {processes}train.batch_size "
                f"{c.train.batch_size} x (train.bptt {c.train.bptt} + 1) = {need:,} are needed: use more "
                f"text or lower them"
            )
        if len(self.corpus.splits["valid"].ids) < g.world_size:
            raise DataError("the validation split is empty: use more text or raise data.valid_fraction")

    def _check_data(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """Fingerprint the splits (on rank 0, which saves them); a resume on other data is refused unless
        allowed. A checkpoint saved before fingerprints resumes unchecked."""
        if not self.group.is_main:
            return {}
        current = {name: split_fingerprint(split) for name, split in self.corpus.splits.items()}
        recorded = saved.get("data_fingerprint") if saved else None
        changed = changed_splits(recorded, current)
        if changed:
            what = describe_changes(changed, cast("dict[str, Any]", recorded), current)  # a change implies a record
            if not self.allow_data_change:
                raise UsageError(
                    f"cannot resume {self.run_dir} on other data than it trained on: {what}. Put the "
                    f"original text back, or pass --allow-data-change to go on with this data"
                )
            self.log(f"warning: resuming on changed data: {what} (--allow-data-change)")
        return current

    def _build_model(self) -> None:
        """Model, its distributed wrapper, optimizer, schedule, averager, loss scaler and the hidden state."""
        c, g = self.config, self.group
        runtime.check_precision(c.train.precision, self.device, c.model.impl, c.model.cell)
        self.model = build_model(self.tokenizer.vocab_size, c.model)
        if c.model.init_embeddings and not self.resume:  # a resumed run's weights come from its checkpoint
            self.log(init_embeddings(self.model, self.tokenizer, c.model.init_embeddings).describe())
        self.model.to(self.device)
        # what training calls: the model, or its DistributedDataParallel wrapper
        self.network: LanguageModel | DistributedDataParallel = self.model
        if g.enabled:
            self.network = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )  # starts every rank from rank 0's weights
            torch.manual_seed((c.train.seed + 1000 * g.rank) % 2**64)  # but each rank draws its own dropout masks
        self.optimizer = build_optimizer(self.model.parameters(), c.optim)
        self.schedule = Schedule(self.optimizer, c.optim, self._total_steps(), self.budget)
        self.averager = Averager(self.model, c.optim)
        # fp16 gradients underflow: scale the loss up, and skip the steps whose scaled gradients overflow
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=c.train.precision == "fp16")
        self.divergence_limit = 2 * math.log(self.tokenizer.vocab_size) + DIVERGED_MARGIN
        self.state = self.model.init_state(c.train.batch_size)  # the recurrent state, carried across windows

    def _describe(self) -> str:
        c, splits = self.config, self.corpus.splits
        m = c.model
        return (
            f"corpus {c.data.corpus}: {len(splits['train'].ids):,} train / {len(splits['valid'].ids):,} valid "
            f"tokens, {c.tokenizer.kind} vocabulary {self.tokenizer.vocab_size:,} | model {m.cell} "
            f"{m.num_layers}x{m.hidden_size}, {self.model.num_parameters():,} parameters | device {self.device}"
            + (f" | {self.group.world_size} processes" if self.group.enabled else "")
            + (f" | resuming at step {self.run.step:,}, epoch {self.run.epoch}" if self.resume else "")
        )

    # -- restore --------------------------------------------------------------------------------------

    def _restore_checked(self, saved: dict[str, Any]) -> None:
        """`_restore`, with a hand-damaged last.pt as one CheckpointError; nothing is written before this."""
        try:
            self._restore(saved)
        except torch.OutOfMemoryError:  # not the file's fault
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            detail = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # torch's "Error(s) in ...:"
            detail = f"missing {detail}" if isinstance(exc, KeyError) else detail
            raise CheckpointError(
                f"{self.run_dir / 'last.pt'} cannot be resumed: its saved state does not fit the "
                f"run it describes ({detail}); it is damaged or was edited"
            ) from None

    def _restore(self, saved: dict[str, Any]) -> None:
        saved_world = saved.get("world_size", 1)
        if saved_world != self.group.world_size:
            raise UsageError(
                f"this run was trained by {saved_world} process(es); resume it with the same number "
                f"(torchrun --nproc_per_node ...), since each holds its own columns and hidden state"
            )
        mine = saved["ranks"][self.group.rank] if "ranks" in saved else saved
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler.is_enabled() and saved.get("scaler"):  # a run resumed in another precision starts afresh
            self.scaler.load_state_dict(saved["scaler"])
        self.schedule.load_state_dict(saved["schedule"])
        self.batches.load_state_dict(saved["batches"])
        hidden = tuple(s.to(self.device) for s in mine["hidden"])
        if [h.shape for h in hidden] != [s.shape for s in self.state]:
            raise ValueError(
                f"hidden state of shapes {[tuple(h.shape) for h in hidden]}, where the model's are "
                f"{[tuple(s.shape) for s in self.state]}"
            )
        self.state = hidden
        self.run.load(saved["trainer"])
        named = saved.get("averaged_model")
        self.averager.load_state_dict(
            {
                **saved["averager"],
                "average": None if named is None else [named[name] for name, _ in self.model.named_parameters()],
            }
        )
        runtime.set_rng_state(mine["rng"])

    # -- the step -------------------------------------------------------------------------------------

    def fit(self) -> TrainSummary:
        """Train until the epochs, max_steps or max_time are done, validate at the end, and say how it went."""
        run, total = self.run, self._total_steps()
        run.meter = Meter()
        self._fit_start = self.clock()
        bar = tqdm(
            total=total or None,  # None: a run on time alone, of unknown length
            initial=min(run.step, total) if total else run.step,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=(not self.show_progress) if self.show_progress is not None else None,
        )
        try:
            with StopSignals(self.log) as signals, bar:
                while not self._finished():
                    self._share_stop(signals)
                    if self._stop_requested(signals, agreed=True) or run.time_up:
                        break
                    self._run_epoch(signals, bar)
                self._share_stop(signals)
                if self._stop_requested(signals, agreed=True):
                    self._stop_on_signal(signals)
            if run.time_up:
                self.log(
                    f"time budget train.max_time={self.config.train.max_time} reached at step {run.step:,} "
                    f"({run.time_spent:.0f} s spent): validating and saving"
                )
            if run.last_eval_step != run.step:
                self._validate(final=True)
        except RuntimeError as exc:  # a collective failed: another rank died or hung
            if not self.group.enabled:
                raise
            raise distributed.failure(self.group, exc, self.config.train.dist_timeout) from None
        return TrainSummary(
            run.step, run.epoch - 1, run.best_val, run.last_val, self.run_dir, run.meter.tokens, run.meter.seconds
        )

    def _run_epoch(self, signals: StopSignals, bar: tqdm) -> None:
        """Train from the current position to the end of the epoch, or until it is time to stop."""
        c, run = self.config.train, self.run
        if self.batches.position == 0:
            self.schedule.epoch_start(run.epoch)
        tick = time.perf_counter()
        for inputs, targets in self.batches:
            self.schedule.step_start(run.step, run.time_progress)
            stats = self._train_step(inputs, targets)
            run.step += 1
            bar.update(1)
            if stats is not None:
                run.pending.append((run.step, stats))
            at_log_point = run.step % c.log_every == 0
            read = self._flush() if at_log_point else None  # a GPU's one wait per window: timed with its steps
            # every rank trains on as many tokens as this one: count the whole job's throughput
            run.meter.add(targets.numel() * self.group.world_size, time.perf_counter() - tick)
            if at_log_point:
                self._log_point(read, bar)
            if c.eval_every and run.step % c.eval_every == 0:
                self._validate()
            if at_log_point or (self.budget and not self.group.enabled):  # alone, the clock is read every step
                self._share_stop(signals)
            if self._stop_requested(signals, agreed=at_log_point) or self._finished():
                return
            tick = time.perf_counter()
        run.epoch += 1
        self.batches.restart()
        self._validate()

    def _train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """One optimizer step on one window: [loss, gradient norm] (not yet read), or None if skipped."""
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        self.state = detach_state(self.state)  # truncated BPTT: keep the values, cut the graph
        with runtime.autocast(self.device, self.config.train.precision):
            out = self.network(inputs, targets, self.state)
        if self.run.step == self.run.start_step and self.config.train.precision == "bf16":
            self._warn_if_fp16(out.state)
        loss = out.nll.float() / out.tokens
        objective = out.training_objective().float()
        if self.config.train.loss_reduction == "sum_over_time":
            objective = objective * inputs.size(0)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)  # clip and report the true gradient norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.optim.clip
        # clipping the global norm keeps one exploding window from wrecking the weights (Pascanu et al. 2013)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(params, clip)
            if clip > 0
            else torch.nn.utils.get_total_norm(cast("list[torch.Tensor]", [p.grad for p in params]))
        )
        if self.scaler.is_enabled():  # an overflow is the scaler's business: it skips the step, lowers the scale
            grad_norm = torch.nan_to_num(grad_norm.float(), nan=0.0, posinf=0.0)
        stats = torch.stack([loss.detach().float(), grad_norm.float()])
        if self._check_each_step:
            loss_value, norm_value = stats.tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                self._non_finite("loss" if not math.isfinite(loss_value) else "gradient norm", self.run.step + 1)
                return None
            self.run.skipped = 0
        # variable-length windows: a longer window takes a proportionally larger step (Merity et al. 2017)
        with self.schedule.scaled(inputs.size(0) / self.config.train.bptt if self.batches.variable else 1.0):
            self.scaler.step(self.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
        self.scaler.update()
        self.averager.update()
        # autocast hands an LSTM's state back in bf16 / fp16: carry (and checkpoint) it at the weights' precision
        dtype = self.model.dtype
        self.state = tuple(s.to(dtype) for s in out.state)
        return stats

    def _warn_if_fp16(self, state: tuple[torch.Tensor, ...]) -> None:
        """A recurrent kernel may run in fp16 under bf16 autocast, and fp16 without loss scaling underflows:
        say so, once (cuDNN's LSTM does; docs/benchmarks.md has the measurement)."""
        if any(s.dtype == torch.float16 for s in state):
            self.log(
                "warning: train.precision=bf16, but the recurrent kernel ran in fp16 (autocast hands its "
                "state back as float16), without loss scaling; train.precision=fp16 adds it"
            )

    @property
    def _check_each_step(self) -> bool:
        """Read loss and gradient norm back at every step (free on a CPU), or only at log points,
        validations and saves: on a GPU a read-back stalls the queue of kernels. Skipping needs the
        check before the update, so it always reads back."""
        return self.device.type != "cuda" or self.config.train.skip_nonfinite > 0

    def _flush(self) -> tuple[float, float] | None:
        """Read the losses and gradient norms of the steps since the last flush (one sync) and stop at a
        non-finite one; returns their mean loss and the last gradient norm (None if there were none).
        Runs before anything is saved, so no NaN is ever saved."""
        pending = self.run.pending
        if not pending:
            return None
        steps = [step for step, _ in pending]
        values = torch.stack([stats for _, stats in pending]).tolist()
        pending.clear()
        for step, (loss, norm) in zip(steps, values, strict=True):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                self._non_finite("loss" if not math.isfinite(loss) else "gradient norm", step)
        return sum(v[0] for v in values) / len(values), values[-1][1]

    def _log_point(self, read: tuple[float, float] | None, bar: tqdm) -> None:
        """Every log_every steps: judge the mean training loss for divergence, then log it."""
        speed = self.run.meter.window()
        if read is not None or self.group.enabled:  # every rank judges the highest rank's loss, so all agree
            self._check_diverged(self.group.highest(read[0] if read else 0.0, self.device))
        if read is None:
            return
        loss, grad_norm = read
        step, lr = self.run.step, self.schedule.lr
        self.run.history.append({"step": step, "loss": loss})
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/grad_norm", grad_norm, step)
        self.writer.add_scalar("perf/tokens_per_sec", speed, step)
        bar.set_postfix(
            epoch=self.run.epoch,
            loss=f"{loss:.3f}",
            ppl=f"{perplexity(loss):.2f}",
            lr=f"{lr:.3g}",
            tok_s=f"{speed:,.0f}",
            refresh=False,
        )

    # -- validate -------------------------------------------------------------------------------------

    def _validate(self, final: bool = False) -> None:
        """Score the validation split, keep the best checkpoint, save last.pt.

        The end-of-run validation does not feed the schedule, so a run stopped at max_steps and
        resumed follows the same learning rates as one that never stopped.
        """
        c, run = self.config.train, self.run
        started = self.clock() if self.budget else 0.0
        self._flush()
        with self.averager.applied():  # NT-ASGD: the averaged weights are the ones that count
            result = evaluate(
                self.model,
                self.corpus.splits["valid"],
                boundary_id=self.tokenizer.boundary_id,
                batch_size=c.eval_batch_size,
                bptt=c.bptt,
                device=self.device,
                group=self.group,
                precision=c.precision,
            )
            if c.tensorboard and self.group.is_main:  # gradient flow and gate saturation, on a slice of it
                log_inside(self.writer, self.model, self.corpus.splits["valid"].ids, run.step)
        if not math.isfinite(result.loss):
            raise TrainingError(
                f"non-finite validation loss ({result.loss}) at step {run.step:,} "
                f"(epoch {run.epoch})" + self._stopped_without_saving()
            )
        self._check_diverged(result.loss, validation=True)
        run.last_eval_step, run.last_val = run.step, result
        run.history.append({"step": run.step, "val_loss": result.loss})
        self.writer.add_scalar("val/loss", result.loss, run.step)
        self.writer.add_scalar("val/ppl", result.ppl, run.step)
        self.writer.flush()
        improved = run.best_val is None or result.loss < run.best_val
        if not final:
            self.schedule.validated(result.loss)
            if self.averager.validated(result.loss):
                self.log(f"NT-ASGD: validation stopped improving; averaging the weights from step {run.step:,} on")
        if improved:
            run.best_val = result.loss
            self.save("best.pt")
        self.save("last.pt")
        if self.budget:
            run.validation_seconds = self.clock() - started
        self.log(
            f"step {run.step:,} | epoch {run.epoch - (self.batches.position == 0)} | val loss {result.loss:.4f} "
            f"| ppl {result.ppl:.2f} | bits/char {result.bits_per_char:.4f} | lr {self.schedule.lr:.4g}"
            + (" | best" if improved else "")
        )

    # -- save -----------------------------------------------------------------------------------------

    def save(self, name: str) -> None:
        """Write a checkpoint (rank 0), holding every rank's hidden state and random generators."""
        self._flush()  # a non-finite step since the last log point stops here, before anything is written
        ranks = self.group.gather({"hidden": tuple(s.detach().cpu() for s in self.state), "rng": runtime.rng_state()})
        if self.group.is_main:
            save_checkpoint(
                {
                    **self._payload(),
                    "world_size": self.group.world_size,
                    "ranks": ranks,
                    "hidden": ranks[0]["hidden"],
                    "rng": ranks[0]["rng"],
                    "start_states": self._start_states(),
                },
                self.run_dir / name,
            )
            if name == "last.pt":
                self.folder.commit()  # the new run can be resumed: a run it replaces goes now

    def _start_states(self) -> State | None:
        """Fresh starts' states for the weights a loaded model gets (rnnlm/warmstart.py); computed once per
        step (best.pt and last.pt share them), in eval mode without random draws, so training is unchanged."""
        cached = self.run.start_states
        if cached is None or cached[0] != self.run.step:
            with self.averager.applied():
                state = start_states(self.model, self.corpus.splits["train"].ids, self.tokenizer.boundary_id)
            self.run.start_states = cached = (self.run.step, state)
        return cached[1]

    def _payload(self) -> dict[str, Any]:
        averaged = {}
        if self.averager.active:
            with self.averager.applied():
                averaged = {"averaged_model": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        return {
            **averaged,
            "averager": self.averager.state_dict(),
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.state_dict(),
            "batches": self.batches.state_dict(),
            # the time spent up to this checkpoint, from which a resume goes on (with or without max_time)
            "trainer": {**self.run.saved(), "time_spent": self._budget_spent()},
            "metrics": self.run.last_val.to_dict() if self.run.last_val else {},
            "run_id": self.run_id,
            "data_fingerprint": self.fingerprints,
        }

    # -- stop -----------------------------------------------------------------------------------------

    def _total_steps(self) -> int:
        """The steps epochs and max_steps allow (0: no limit but max_time)."""
        c = self.config.train
        by_epochs = c.epochs * len(self.batches) if c.epochs else math.inf
        total = min(by_epochs, c.max_steps or math.inf)
        return 0 if total == math.inf else int(total)

    def _finished(self) -> bool:
        c, run = self.config.train, self.run
        return bool((c.max_steps and run.step >= c.max_steps) or (c.epochs and run.epoch > c.epochs) or run.time_up)

    def _share_stop(self, signals: StopSignals) -> None:
        """At agreed steps (log points, epoch ends; alone with max_time, every step): read the budget's clock,
        and every rank takes the signal any rank caught (the highest) and rank 0's clock and verdict, so that
        all set the same rate and stop at the same step."""
        run = self.run
        if self.budget:  # the time to train is the budget less the final validation's, which the cosine spans
            run.time_spent, final = self._budget_spent(), self._final_validation_seconds()
            run.time_up = run.time_spent + final >= self.budget
            run.time_progress = min(run.time_spent / max(self.budget - final, 1e-9), 1.0)
        if self.group.enabled:
            main = float(self.group.is_main)
            caught, spent, up, progress = self.group.highest_each(
                [signals.caught or 0, run.time_spent * main, run.time_up * main, run.time_progress * main], self.device
            )
            signals.caught, run.time_up = int(caught) or None, bool(up)
            run.time_spent, run.time_progress = spent, progress

    def _budget_spent(self) -> float:
        """Seconds of train.max_time spent: earlier fits' (from the checkpoint), and this fit's wall clock."""
        return self.run.time_before + (self.clock() - self._fit_start)

    def _final_validation_seconds(self) -> float:
        """What the validation at the end will take, kept free in the budget: as long as the last one took
        (its checkpoint writes included), or before any, half as long as training on as many tokens took (a
        forward pass only; measured 2.3x training's tokens/s for a char LSTM on a CPU), and at most half the
        budget, since the first steps, slower than the rest, make that guess high."""
        run = self.run
        if run.validation_seconds is not None:
            return run.validation_seconds
        trained = run.time_spent - run.time_before
        if run.meter.tokens == 0 or trained <= 0:
            return 0.0
        return min(len(self.corpus.splits["valid"].ids) * trained / run.meter.tokens / 2, self.budget / 2)

    def _stop_requested(self, signals: StopSignals, agreed: bool) -> bool:
        """Whether a signal asks to stop now. Distributed ranks act only on one shared at an agreed step."""
        return signals.caught is not None and (agreed or not self.group.enabled)

    def _stop_on_signal(self, signals: StopSignals) -> None:
        self.save("last.pt")
        raise Interrupted(
            f"stopped at step {self.run.step:,}; saved {self.run_dir / 'last.pt'}. Resume with: "
            f"rnnlm train --resume {self.run_dir}",
            128 + (signals.caught or 0),
        )

    def _non_finite(self, what: str, step: int) -> None:
        """Skip the step (keeping weights and hidden state) while the configured allowance lasts, else stop."""
        limit = self.config.train.skip_nonfinite
        where = f"at step {step:,} (epoch {self.run.epoch})"
        if self.run.skipped < limit:
            self.run.skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # closes the step the scaler had opened with unscale_
            self.log(f"warning: non-finite {what} {where}: step skipped ({self.run.skipped} of {limit} in a row)")
            return
        raise TrainingError(
            f"non-finite {what} {where}"
            + (f" after {limit} skipped steps in a row" if limit else "")
            + self._stopped_without_saving()
        )

    def _check_diverged(self, loss: float, validation: bool = False) -> None:
        """Stop a run whose loss stays far above a uniform guess's (see DIVERGED_MARGIN), as for a NaN."""
        run = self.run
        if not validation:
            run.above_limit = run.above_limit + 1 if loss > self.divergence_limit else 0
        if loss <= self.divergence_limit or (not validation and run.above_limit < DIVERGED_LOG_POINTS):
            return
        what = "validation loss" if validation else "mean training loss"
        span = "" if validation else f" for {run.above_limit} log points in a row"
        raise TrainingError(
            f"the run diverged at step {run.step:,} (epoch {run.epoch}): {what} {loss:.4g}{span}, "
            f"above {self.divergence_limit:.2f} (twice ln V plus {DIVERGED_MARGIN:g} nats; a uniform "
            f"guess scores {math.log(self.tokenizer.vocab_size):.2f})" + self._stopped_without_saving()
        )

    def _stopped_without_saving(self) -> str:
        """The end of a message that stops the run: what it leaves (the last good checkpoint, if the run has
        written one yet) and what to try."""
        kept = (
            f", so the last good checkpoint in {self.run_dir} is untouched"
            if (self.run_dir / "last.pt").exists()
            else " (the run had not written a checkpoint yet)"
        )
        return f"; stopped without saving{kept}. Try a lower optim.lr or optim.clip"

    def close(self, finished: bool = False) -> None:
        """Release what `setup` took, however far it got: the event writer, the run folder (putting back a run
        an --overwrite stopped before its first last.pt was to replace), the process group. `finished`: the
        run ended normally on every rank, so the ranks can wait for each other before leaving the group."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()
        self.folder.rollback()
        self.folder.release()
        if hasattr(self, "model"):  # the DDP wrapper holds the process group: let it go before the group does
            self.network = self.model
        distributed.leave(together=finished)

    # -- views for callers ----------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def epoch(self) -> int:
        return self.run.epoch

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.run.history
