"""Per-token and per-word scores of a text (`rnnlm score`): log-probability, surprisal and entropy, streamed.

Every token is scored once with its whole left context, exactly as `rnnlm eval --text` scores it, so the
surprisals add up to what `eval` reports. A bidirectional model is scored by its forward stack, the one
head that is a left-to-right language model. The text is read in blocks, encoded piece by piece and
scored window by window, so memory does not grow with its length.

Words (`words=True`) are the whitespace-separated words of the text, the unit reading-time and ERP studies
use. A token goes to the word in which its first non-space character falls; a token with no such character
(a space, or an unfinished UTF-8 byte sequence) goes to the next word, as sentencepiece's word-initial
"▁" already makes the space before a word part of it; a line end (newline or `<eos>`) is a row of its
own, so nothing is left out of the sums. A word's entropy is that of the prediction its first token was
scored under: how uncertain the model was where the word began.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnlm.data.corpus import BLOCK, Segment, iter_text
from rnnlm.data.tokenizers import Tokenizer
from rnnlm.errors import DataError
from rnnlm.models import LanguageModel
from rnnlm.stream import LN2, score_stream

LINE_END = "\n"


@dataclass(frozen=True)
class TokenScore:
    text: str  # the token as the vocabulary spells it, or the word; "\n" for a line end
    log_prob: float  # natural log
    entropy: float  # bits, of the prediction the (first) token was scored under
    line: int  # 1-based line of the text
    tokens: int = 1  # tokens summed into this row

    @property
    def surprisal(self) -> float:
        """-log2 p, bits."""
        return -self.log_prob / LN2


def text_ids(path: Path, tokenizer: Tokenizer, block_size: int = BLOCK) -> Iterator[np.ndarray]:
    """The token ids of a text file, piece by piece, as `rnnlm eval --text` encodes it (DataError for a missing,
    empty, binary or non-UTF-8 file)."""
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path} holds no text to score")
    previous = None
    for text in iter_text(Segment(path, 0, path.stat().st_size), block_size=block_size):
        if previous is not None:
            yield tokenizer.encode(previous, partial=not previous.endswith(LINE_END))
        previous = text
    if previous is not None:
        yield tokenizer.encode(previous, partial=False)


def token_scores(
    model: LanguageModel,
    tokenizer: Tokenizer,
    path: Path,
    *,
    words: bool = False,
    start: str = "warm",
    device: torch.device | str = "cpu",
    block_size: int = BLOCK,
) -> Iterator[TokenScore]:
    """One TokenScore per token of the text at `path`, in order; with `words`, per word and line end."""
    scored = _scored_tokens(model, tokenizer, path, start, device, block_size)
    return group_words(scored) if words else (score for _, score in scored)


def _scored_tokens(
    model: LanguageModel, tokenizer: Tokenizer, path: Path, start: str, device: torch.device | str, block_size: int
) -> Iterator[tuple[str, TokenScore]]:
    """Each token's decoded text ("" while a character's UTF-8 bytes are unfinished) and its score."""
    decode = tokenizer.stream_decoder()
    line = 1
    for scored in score_stream(
        model,
        text_ids(path, tokenizer, block_size),
        boundary_id=tokenizer.boundary_id,
        start=start,
        device=device,
        distributions=True,
    ):
        assert scored.entropy is not None
        for i, log_prob, entropy in zip(
            scored.ids.tolist(), scored.log_probs.tolist(), scored.entropy.tolist(), strict=True
        ):
            text = decode(i)
            yield text, TokenScore(tokenizer.piece(i), log_prob, entropy, line)
            line += LINE_END in text


class _Word:
    """A row being summed: the text of its non-space characters, its log-probability and first entropy."""

    def __init__(self) -> None:
        self.text, self.log_prob, self.entropy, self.tokens, self.line = "", 0.0, 0.0, 0, 0

    def add(self, score: TokenScore) -> None:
        if self.tokens == 0:
            self.entropy, self.line = score.entropy, score.line
        self.log_prob += score.log_prob
        self.tokens += 1

    def take(self, other: _Word) -> None:
        """Add the tokens held for this word (`other`: the spaces before it, or bytes of its next character)."""
        if other.tokens and self.tokens == 0:
            self.entropy, self.line = other.entropy, other.line
        self.log_prob += other.log_prob
        self.tokens += other.tokens

    def score(self, text: str | None = None) -> TokenScore:
        return TokenScore(self.text if text is None else text, self.log_prob, self.entropy, self.line, self.tokens)


def group_words(tokens: Iterable[tuple[str, TokenScore]]) -> Iterator[TokenScore]:
    """Sum (decoded text, score) pairs to words and line ends (see the module's docstring)."""
    word: _Word | None = None  # the word being read, until a space or line end closes it
    held = _Word()  # tokens with no non-space character yet, for the next word
    for text, score in tokens:
        if LINE_END in text:
            if word is not None:
                yield word.score()
            held.add(score)
            yield held.score(LINE_END)
            word, held = None, _Word()
        elif text.strip() == "":  # a space, or bytes of a character not yet whole
            if text and word is not None:
                yield word.score()
                word = None
            held.add(score)
        else:
            if word is None or text[0].isspace():
                if word is not None:
                    yield word.score()
                word = _Word()
            word.take(held)
            word.add(score)
            word.text += text.strip()
            held = _Word()
            if text[-1].isspace():
                yield word.score()
                word = None
    if word is not None:
        yield word.score()
    if held.tokens:  # spaces at the very end of the text, with no word after them
        yield held.score("")
