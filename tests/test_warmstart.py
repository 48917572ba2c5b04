"""Fresh starts from the checkpoint's warm start state (issue 18): what it predicts, that it is
deterministic, that it costs training nothing, and that --start zero and old checkpoints behave as before."""

import json
import math
import random

import numpy as np

import pytest
import torch

from helpers import invoke, tiny_config, train_run
from rnnlm.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnlm.data.corpus import load_corpus
from rnnlm.config import load_config
from rnnlm.data.corpus import Split
from rnnlm.distributed import Group
from rnnlm.evaluate import evaluate, score_ids
from rnnlm.models import build_model
from rnnlm.sample import fill_blanks, generate
from rnnlm.warmstart import MixtureReader, line_ends, mixture_log_probs, start_ends, start_states


def paragraphs(count: int = 400) -> str:
    """Paragraphs of random words, each opening with the line "Zed:" after a blank line."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    lines = [[" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(1, 3))]
             for _ in range(count)]
    return "\n".join("Zed:\n" + "\n".join(body) + "\n" for body in lines)


def train(corpus, run_dir, *overrides):
    config = tiny_config(corpus, "model.hidden_size=32", "train.batch_size=8", "train.bptt=32", "optim.name=adam",
                         "optim.lr=0.01", "train.eval_every=0", *overrides)
    return train_run(config, run_dir)[0]


@pytest.fixture(scope="module")
def paragraph_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paragraphs")
    (folder / "para.txt").write_text(paragraphs(), encoding="utf-8")
    train(folder / "para.txt", folder / "run", "train.max_steps=150")
    return folder


def first_token_probability(model, tokenizer, text, warm):
    """p(first token of `text` | a fresh start), from the start states' mixture or from zeros."""
    inputs, targets = torch.tensor([[tokenizer.boundary_id]]), torch.tensor([[int(tokenizer.encode(text)[0])]])
    with torch.inference_mode():
        if not warm:
            return float(model.prefill(inputs, model.init_state(1))[0][0, targets[0, 0]].exp())
        return float(mixture_log_probs(model, inputs, targets, model.start_states)[0].exp())


def test_a_fresh_start_predicts_how_a_paragraph_starts(paragraph_run):
    loaded = load_model(paragraph_run / "run" / "best.pt")
    warm = first_token_probability(loaded.model, loaded.tokenizer, "Z", warm=True)
    zero = first_token_probability(loaded.model, loaded.tokenizer, "Z", warm=False)
    # half the start states stand for paragraph starts, where "Z" comes next; the others for any line
    assert warm > 0.35 and zero < 0.2  # measured: 0.42 and 0.16
    assert generate(loaded.model, loaded.tokenizer, length=4, temperature=0)[0] == "Zed:"
    assert generate(loaded.model, loaded.tokenizer, length=4, temperature=0, start="zero")[0] != "Zed:"


def test_start_states_are_real_states_before_line_ends_and_deterministic(paragraph_run):
    loaded = load_model(paragraph_run / "run" / "best.pt")
    boundary = loaded.tokenizer.boundary_id
    corpus = load_corpus(loaded.config.data, loaded.config.tokenizer, loaded.tokenizer, splits=("train",))
    ids = corpus.splits["train"].ids
    ends = start_ends(ids, boundary, 16, 128)
    assert len(ends) == 16 and all(ids[e] == boundary for e in ends)
    blank = line_ends(ids, boundary, 8, 128, blank=True)  # about half of them end a blank line
    assert len(blank) >= 6 and list(ends[:len(blank)]) == list(blank) and all(ids[e - 1] == boundary for e in blank)
    again = start_states(loaded.model, ids, boundary)
    for saved, computed in zip(loaded.model.start_states, again):
        assert saved.shape == (16, 32) and torch.equal(saved, computed)  # same weights, same text: same states
    reloaded = load_model(paragraph_run / "run" / "best.pt").model.start_states
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.start_states, reloaded))


def test_text_without_blank_lines_takes_every_line_end():
    ids = torch.tensor([5, 6, 0, 7, 0, 8, 9, 0] * 50).numpy()
    assert len(line_ends(ids, 0, 16, 4, blank=True)) == 0
    ends = start_ends(ids, 0, 16, 4)
    assert len(ends) == 16 and all(ids[e] == 0 for e in ends)


def test_computing_the_start_state_changes_no_training_step(tiny_corpus, tmp_path, monkeypatch):
    overrides = ["model.dropout=0.3", "train.max_steps=12", "train.eval_every=3"]
    kept = train(tiny_corpus, tmp_path / "kept", *overrides)
    monkeypatch.setattr("rnnlm.train.start_states", lambda *args, **kwargs: None)
    skipped = train(tiny_corpus, tmp_path / "skipped", *overrides)
    for (name, a), b in zip(kept.model.state_dict().items(), skipped.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert kept.history == skipped.history
    assert load_checkpoint(tmp_path / "kept" / "last.pt")["start_states"][0].shape == (16, 32)


def test_start_zero_gives_the_numbers_of_a_checkpoint_without_a_start_state(paragraph_run, tmp_path):
    best = paragraph_run / "run" / "best.pt"
    payload = load_checkpoint(best)
    del payload["start_states"]
    old = tmp_path / "old.pt"
    save_checkpoint(payload, old)
    text = tmp_path / "t.txt"
    text.write_text("Zed:\nalpha beta\n", encoding="utf-8")
    scores = {name: json.loads(invoke("eval", path, "--text", text, "--json", *flags).output.splitlines()[-1])
              for name, path, flags in [("warm", best, []), ("zero", best, ["--start", "zero"]), ("old", old, [])]}
    assert scores["zero"]["loss"] == scores["old"]["loss"]
    assert scores["zero"]["start"] == scores["old"]["start"] == "zero"  # what they started from
    assert scores["warm"]["loss"] < scores["zero"]["loss"] - 0.1
    for start, phrase in [("warm", "warm start"), ("zero", "zero start")]:
        first_line = invoke("eval", best, "--text", text, "--start", start).output.splitlines()[0]
        assert first_line.endswith(f"(full left context), {phrase}")
    loaded = load_model(best)
    manual = evaluate(loaded.model, load_corpus(loaded.config.data, loaded.config.tokenizer, loaded.tokenizer,
                                                splits=("valid",)).splits["valid"],
                      boundary_id=loaded.tokenizer.boundary_id, start="zero")
    loaded.model.start_states = None  # what every fresh start read from before issue 18
    before = evaluate(loaded.model, load_corpus(loaded.config.data, loaded.config.tokenizer, loaded.tokenizer,
                                                splits=("valid",)).splits["valid"],
                      boundary_id=loaded.tokenizer.boundary_id)
    assert manual.nll == before.nll
    old_sample = invoke("sample", old, "--length", "8", "--seed", "3")
    assert old_sample.exit_code == 0 and "no warm start state" in old_sample.output
    zero_sample = invoke("sample", best, "--length", "8", "--seed", "3", "--start", "zero")
    assert zero_sample.output.splitlines()[-1] == old_sample.output.splitlines()[-1]


def test_every_sample_of_a_batch_and_bf16_weights_start_warm(paragraph_run):
    loaded = load_model(paragraph_run / "run" / "best.pt")
    model, tokenizer = loaded.model, loaded.tokenizer
    for weights in (None, torch.bfloat16):
        texts = generate(model, tokenizer, length=4, temperature=0, num_samples=3, weights=weights)
        assert texts == ["Zed:"] * 3
    zero = generate(model, tokenizer, length=4, temperature=0, num_samples=3, start="zero")
    assert zero != ["Zed:"] * 3


def test_fill_reads_the_left_context_from_the_start_state(paragraph_run, tmp_path):
    trainer = train(paragraph_run / "para.txt", tmp_path / "bi", "model.bidirectional=true", "train.max_steps=60")
    loaded = load_model(tmp_path / "bi" / "best.pt")
    assert loaded.model.start_states is not None and trainer.model.start_states is None
    # a blank after a fresh start: the first start state ends a blank line, after which "Zed:" comes
    warm = dict(fill_blanks(loaded.model, loaded.tokenizer, "___ed:\nalpha", top_k=3)[0])
    zero = dict(fill_blanks(loaded.model, loaded.tokenizer, "___ed:\nalpha", top_k=3, start="zero")[0])
    assert warm["Z"] > 0.6 and zero["Z"] < 0.45  # measured: 0.66 and 0.40
    loaded.model.start_states = None
    assert dict(fill_blanks(loaded.model, loaded.tokenizer, "___ed:\nalpha", top_k=3)[0]) == zero
    refused = invoke("sample", tmp_path / "bi" / "best.pt", "--reverse", "--start", "warm", "--length", "3")
    assert refused.exit_code == 2 and "--start warm applies to left-to-right generation" in refused.output
    assert invoke("sample", tmp_path / "bi" / "best.pt", "--reverse", "--start", "zero", "--length", "3").exit_code == 0


def test_a_start_state_that_does_not_fit_the_model_is_refused(paragraph_run, tmp_path):
    payload = load_checkpoint(paragraph_run / "run" / "best.pt")
    payload["start_states"] = (torch.zeros(1, 7),)
    bad = tmp_path / "bad.pt"
    save_checkpoint(payload, bad)
    result = invoke("sample", bad, "--length", "3")
    assert result.exit_code == 1 and "start states do not fit" in result.output


def test_the_mixture_is_a_distribution_over_texts(paragraph_run):
    loaded = load_model(paragraph_run / "run" / "best.pt")
    model, V = loaded.model, loaded.model.vocab_size
    first, second = torch.arange(V).repeat_interleave(V), torch.arange(V).repeat(V)  # every text of two tokens
    inputs = torch.stack([torch.full((V * V,), loaded.tokenizer.boundary_id), first])  # a line end, then the first
    with torch.inference_mode():
        log_probs, choice = mixture_log_probs(model, inputs, torch.stack([first, second]), model.start_states)
    assert float(log_probs.sum(0).double().exp().sum()) == pytest.approx(1.0, abs=1e-6)
    assert choice.shape == (V * V,) and int(choice.max()) < len(model.start_states[0])


def random_starts(*overrides, vocab=11):
    """An untrained model in float64 with 16 random start states, far apart: which one a column picks
    depends strongly on the tokens it reads."""
    torch.manual_seed(0)
    config = load_config(None, ["model.embed_size=8", "model.hidden_size=12", "model.init=uniform",
                                "model.init_range=0.5", *overrides]).model
    model = build_model(vocab, config).double().eval()
    model.start_states = tuple(torch.rand(16, 12, dtype=torch.float64) * 2 - 1 for _ in model.init_state(1))
    return model


def test_no_head_of_a_warm_start_sees_the_token_it_predicts():
    model, V = random_starts("model.bidirectional=true", "model.num_layers=2"), 11
    # [line end, v, 4]: the infill head predicts v from the line end and the 4; over every v it must sum to 1
    heads = [score_ids(model, np.array([v, 4]), boundary_id=0, batch_size=1, bptt=256, device="cpu")
             for v in range(V)]
    assert sum(math.exp(-h["infill"][0]) for h in heads) == pytest.approx(1.0, abs=1e-6)


class OneOfTwo(Group):
    """A rank of a two-rank group, without the processes: its sums are its own numbers."""

    def sum(self, values, device):
        return values


def test_every_rank_of_a_distributed_eval_starts_warm():
    model, ids = random_starts(), np.random.default_rng(0).integers(1, 11, 41)
    for rank, (first, end) in enumerate([(0, 20), (20, 41)]):
        result = evaluate(model, Split(ids, chars=41, bytes=41), boundary_id=0, group=OneOfTwo(rank, 2))
        boundary = int(ids[first - 1]) if first else 0
        own = {start: score_ids(model, ids[first:end], boundary_id=boundary, batch_size=1, bptt=256, device="cpu",
                                start=start)[""] for start in ("warm", "zero")}
        assert result.tokens == end - first and result.nll == pytest.approx(own["warm"][0], rel=1e-12)
        assert abs(own["warm"][0] - own["zero"][0]) > 1e-3  # so equal to warm is not equal to zero


def test_the_mixture_spans_the_same_tokens_whatever_the_window(monkeypatch):
    model, ids = random_starts(), np.random.default_rng(1).integers(1, 11, 60)  # 3 columns of 20
    scores = []
    original = MixtureReader.read
    monkeypatch.setattr(MixtureReader, "read", lambda self, *a: scores.append(original(self, *a)) or scores[-1])

    def per_token(text):  # every token is inside the span (256): each one's log-probability, in text order
        scores.clear()
        total = score_ids(model, text, boundary_id=0, batch_size=3, bptt=5, device="cpu")[""][0]
        per = torch.cat(scores).T.reshape(-1)  # (T, 3) windows -> column after column, as the text runs
        assert float(-per.sum()) == pytest.approx(total, rel=1e-12)
        return per

    changed = ids.copy()
    changed[50] = 1 + changed[50] % 10  # a late token (column 2, its 11th)
    before, after = per_token(ids), per_token(changed)
    assert torch.allclose(before[:50], after[:50], rtol=0, atol=1e-12)  # what comes later changes no earlier score
    assert not torch.allclose(before[50:], after[50:])
    totals = {bptt: score_ids(model, ids, boundary_id=0, batch_size=3, bptt=bptt, device="cpu")[""][0]
              for bptt in (5, 256)}
    assert totals[5] == pytest.approx(totals[256], rel=1e-12)
    monkeypatch.setattr("rnnlm.warmstart.SPAN", 8)  # the span ends inside a window, and the text goes on
    short = {bptt: score_ids(model, ids, boundary_id=0, batch_size=3, bptt=bptt, device="cpu")[""][0]
             for bptt in (3, 5, 256)}
    assert short[3] == pytest.approx(short[256], rel=1e-12) and short[5] == pytest.approx(short[256], rel=1e-12)
    assert abs(short[256] - totals[256]) > 0.01
