"""Loss, perplexity and bits per token, character and byte over a whole split, in one stateful pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rnnlm.data.batching import eval_windows
from rnnlm.data.corpus import Split
from rnnlm.distributed import Group
from rnnlm.ids import PAD
from rnnlm.models import LanguageModel, LMOutput, State
from rnnlm.runtime import autocast
from rnnlm.synth import find_floor
from rnnlm.warmstart import MixtureReader

MAX_EXP = math.log(float.fromhex("0x1.fffffffffffffp+1023"))  # 709.78: exp of more overflows a float


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows (a diverged model's loss), NaN for NaN: never an OverflowError."""
    return math.exp(loss) if loss <= MAX_EXP else (math.inf if loss > MAX_EXP else math.nan)


@dataclass(frozen=True)
class EvalResult:
    nll: float  # total negative log-likelihood, nats
    tokens: int
    chars: int
    bytes: int
    heads: dict[str, EvalResult] = field(default_factory=dict)  # bidirectional: backward, infill

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def to_dict(self) -> dict[str, Any]:
        numbers: dict[str, Any] = {
            "loss": self.loss,
            "ppl": self.ppl,
            "bits_per_token": self.bits_per_token,
            "bits_per_char": self.bits_per_char,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "chars": self.chars,
            "bytes": self.bytes,
        }
        return {**numbers, **{name: head.to_dict() for name, head in self.heads.items()}}


def evaluate(
    model: LanguageModel,
    split: Split,
    *,
    boundary_id: int,
    batch_size: int = 1,
    bptt: int = 256,
    device: torch.device | str = "cpu",
    group: Group | None = None,
    precision: str = "fp32",
    start: str = "warm",
) -> EvalResult:
    """Score every token of `split` once, carrying the hidden state across windows.

    Each column starts fresh: with `start` "warm" from the mixture of the model's start states
    (rnnlm/warmstart.py) where it has them (a loaded checkpoint does; a model in training does not,
    so validation starts at zero as it always has), else, and with `start` "zero", from zeros.

    Uses its own hidden state and eval mode (no dropout), so a validation pass during training
    leaves the training state untouched. `precision` bf16 / fp16 runs the forward pass under autocast
    (the sums stay float64). In a distributed run each rank scores a contiguous
    1/world_size of the split (conditioned on the token before it) and the sums are all-reduced.
    """
    ids = split.ids
    if group is not None and group.enabled:
        first, end = len(ids) * group.rank // group.world_size, len(ids) * (group.rank + 1) // group.world_size
        boundary_id = int(ids[first - 1]) if first > 0 else boundary_id
        ids = ids[first:end]
    totals = score_ids(
        model,
        ids,
        boundary_id=boundary_id,
        batch_size=batch_size,
        bptt=bptt,
        device=device,
        precision=precision,
        start=start,
    )
    if group is not None and group.enabled:
        names = sorted(totals)
        summed = group.sum([float(v) for name in names for v in totals[name]], torch.device(device))
        totals = {name: (summed[2 * i], int(summed[2 * i + 1])) for i, name in enumerate(names)}
    nll, tokens = totals.pop("")
    heads = {}
    for name, (head_nll, head_tokens) in totals.items():  # chars and bytes pro rata to the tokens scored
        share = head_tokens / max(tokens, 1)
        heads[name] = EvalResult(head_nll, head_tokens, round(split.chars * share), round(split.bytes * share))
    return EvalResult(nll, tokens, split.chars, split.bytes, heads)


def score_ids(
    model: LanguageModel,
    ids: np.ndarray,
    *,
    boundary_id: int,
    batch_size: int,
    bptt: int,
    device: torch.device | str,
    precision: str = "fp32",
    start: str = "warm",
) -> dict[str, tuple[float, int]]:
    """Summed nll and token count per head: "" for the model's own, plus its other heads by name
    (`LMOutput.heads`: a bidirectional model's "backward" and "infill").

    With `start` "warm" and the model's start states, each column's first `warmstart.SPAN` tokens are
    scored under their mixture, across windows, so the number does not depend on `bptt`; then the
    column goes on from the start that was likeliest over them (see `_mixed_window`).
    """
    was_training = model.training
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    dtype = model.dtype
    try:
        with torch.inference_mode(), autocast(torch.device(device), precision):
            columns = min(batch_size, max(len(ids), 1))
            state = model.init_state(columns, device)
            starts = model.start_states if start == "warm" else None
            reader = MixtureReader(model, starts, columns, device) if starts is not None else None
            for inputs, targets in eval_windows(ids, batch_size, bptt, boundary_id):
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if reader is not None and reader.left > 0:
                    heads, state = _mixed_window(model, reader, inputs, targets)
                else:
                    out = model(inputs, targets, state)
                    heads, state = {"": (out.nll, out.tokens), **_other_heads(out)}, out.state
                for name, (nll, count) in heads.items():
                    total = sums.setdefault(
                        name,
                        [
                            torch.zeros((), dtype=torch.float64, device=device),
                            torch.zeros((), dtype=torch.int64, device=device),
                        ],
                    )
                    total[0] += nll.double()
                    total[1] += count
                state = tuple(s.to(dtype) for s in state)  # autocast may hand it back in bf16 / fp16
    finally:
        model.train(was_training)
    return {name: (float(nll), int(count)) for name, (nll, count) in sums.items()} or {"": (0.0, 0)}


def _mixed_window(
    model: LanguageModel, reader: MixtureReader, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], State]:
    """Score a window that holds some of the columns' first SPAN tokens: those under the mixture, any after
    them from the start likeliest over the span; the state to go on from.

    The other heads (a bidirectional model's backward and infill) read the window from the start likeliest
    given the tokens before it (the first start state in the first window): had they read it from the
    start chosen over the window, the infill head's prediction of a token would depend on that token.
    """
    before = reader.current()
    inside = min(len(inputs), reader.left)
    nll = -reader.read(inputs[:inside], targets[:inside]).sum()
    others = _other_heads(model(inputs, targets, before)) if model.config.bidirectional else {}
    state = reader.current()  # at the span's end: from its likeliest start, having read the span
    if inside < len(inputs):  # the span ends inside this window
        rest = model(inputs[inside:], targets[inside:], state)
        nll, state = nll + rest.nll, rest.state
    return {"": (nll, (targets != PAD).sum()), **others}, state


def _other_heads(out: LMOutput) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: (head.nll, head.tokens) for name, head in out.heads().items()}


# -- scoring a checkpoint: the library side of `rnnlm eval` --------------------------------------------------
# (the data rooms are imported where used: only `rnnlm eval` needs them, not validation during training)

if TYPE_CHECKING:
    from rnnlm.adaptation import Methods
    from rnnlm.checkpoint import Loaded


@dataclass(frozen=True)
class CheckpointScore:
    """What `rnnlm eval` reports: the numbers, what they were measured on, and how far to trust bits per byte."""

    result: EvalResult
    source: str  # the text file, or "CORPUS (SPLIT split)"
    unk_tokens: int
    lossy: bool  # word tokens fold whitespace, or <unk> stood in for text: not the raw text's bits per byte


def eval_source(
    loaded: Loaded, *, split: str, text: str | Path | None, log: Callable[[str], None] | None = None
) -> tuple[Split, str]:
    """The tokens `rnnlm eval` scores, and their name: the text file, or `split` of the corpus the checkpoint
    trained on (only that split is read; a download is announced through `log`). Raises DataError when there
    is nothing to score."""
    from rnnlm.data import corpus, registry
    from rnnlm.errors import DataError

    data = loaded.config.data
    if text:
        scored = corpus.encode_text_file(Path(text), loaded.tokenizer, registry.default_cache_dir(data.cache_dir))
        source = str(text)
    else:
        found = corpus.load_corpus(
            data, loaded.config.tokenizer, loaded.tokenizer, splits=(split,), log=log
        ).splits.get(split)
        source = f"{data.corpus} ({split} split)"
        if found is None:
            raise DataError(f"corpus {data.corpus!r} has no {split} split")
        scored = found
    if len(scored.ids) == 0:
        raise DataError(f"{source} holds no text to score")
    return scored, source


def score_checkpoint(
    loaded: Loaded,
    scored: Split,
    source: str,
    *,
    batch_size: int,
    bptt: int,
    device: torch.device | str,
    precision: str,
    start: str,
    methods: Methods | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
) -> CheckpointScore:
    """Score `scored` with a loaded checkpoint's model (see `evaluate`), or as one stream with the cache and / or
    dynamic evaluation of `methods` (rnnlm/adaptation.py; `statistics` for RMS). A non-finite loss of any head
    is a diverged or damaged model: CheckpointError, not a number to report."""
    from rnnlm.adaptation import score_methods
    from rnnlm.data.analysis import count_token
    from rnnlm.errors import CheckpointError

    if methods is not None and methods.name != "static":
        result = score_methods(loaded, scored, methods, statistics=statistics, device=device, start=start, window=bptt)
    else:
        result = evaluate(
            loaded.model,
            scored,
            boundary_id=loaded.tokenizer.boundary_id,
            batch_size=batch_size,
            bptt=bptt,
            device=device,
            precision=precision,
            start=start,
        )
    broken = [
        name or "forward" for name, numbers in [("", result), *result.heads.items()] if not math.isfinite(numbers.loss)
    ]
    if broken:
        raise CheckpointError(
            f"the {', '.join(broken)} loss on {source} is not finite: the checkpoint's weights are diverged or damaged"
        )
    unk = count_token(scored.ids, loaded.tokenizer.unk_id)
    return CheckpointScore(result, source, unk, lossy=loaded.tokenizer.kind == "word" or unk > 0)


def floor_numbers(loaded: Loaded, text: str | Path | None, result: EvalResult) -> dict[str, float | None]:
    """`floor_bits_per_token` and `gap_bits_per_token` (bits per token minus the floor) when the text scored is
    an `rnnlm synth` task: its floor.json beside the text, or beside the checkpoint corpus's split files; else
    both None."""
    folder = Path(text).parent if text else Path(loaded.config.data.corpus)
    floor = find_floor(folder, loaded.tokenizer.kind) if folder.is_dir() else None
    return {
        "floor_bits_per_token": floor,
        "gap_bits_per_token": None if floor is None else result.bits_per_token - floor,
    }
