"""Word vectors (rnnlm/embeddings.py): GloVe and word2vec text read into a fresh word model's embedding
(`model.init_embeddings`), and `rnnlm export-embeddings` writing them back out, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import invoke, tiny_config, train_run

from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import dump_yaml
from rnnlm.embeddings import VectorFile, match_vectors
from rnnlm.train import Trainer

WORD = ("tokenizer.kind=word",)  # the tiny corpus's 25 words: Citizen: First speak. All: Speak, ... <eos> <unk>


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def built(config, run_dir: Path) -> tuple[Trainer, list[str]]:
    """A Trainer set up (model built, nothing trained) and what it logged; the caller closes it."""
    lines: list[str] = []
    trainer = Trainer(config, run_dir, progress=False, log=lines.append)
    trainer.setup()
    return trainer, lines


def embedding(model) -> torch.Tensor:
    return model.get_parameter("embedding.weight").detach()


def test_glove_and_word2vec_text_read_the_same(tmp_path):
    lines = "the 0.5 -1 2e-3\nof 1 2 3\nMonday -0.25 0 1\n"
    glove = write(tmp_path / "glove.txt", lines)
    word2vec = write(tmp_path / "w2v.txt", "3 3\n" + lines.replace("\n", " \n"))  # the C tool's trailing space
    for path, count in ((glove, None), (word2vec, 3)):
        with VectorFile(path) as file:
            assert (file.dim, file.count) == (3, count)
            read = {word: vector.tolist() for word, vector in file.vectors()}
        assert read == {"the": [0.5, -1.0, 0.002], "of": [1.0, 2.0, 3.0], "Monday": [-0.25, 0.0, 1.0]}


def test_coverage_counts_exact_then_lowercase_then_word2vec_eos(tmp_path):
    vectors = write(
        tmp_path / "v.txt",
        "apple 1 1\nthe 2 2\nmonday 3 3\nApple 4 4\n</s> 5 5\n. . . 6 6\n. 7 7\nunused 8 8\n",
    )
    words = ["<eos>", "the", "Monday", "Apple", "zebra", ".", "<unk>"]
    with VectorFile(vectors) as file:
        rows, coverage = match_vectors(file, words)
    # Apple: its exact line wins over "apple", read first; <eos>: word2vec's "</s>"; ". . .": not "."
    assert {i: r.tolist() for i, r in rows.items()} == {0: [5, 5], 1: [2, 2], 2: [3, 3], 3: [4, 4], 5: [7, 7]}
    assert (coverage.found, coverage.lowercase, coverage.vocab_size) == (5, 1, 7)
    assert coverage.describe() == (
        f"5 of 7 vocabulary words found in {vectors} (71.4%); the other 2 keep their random init "
        "(exact spelling first, then lowercase: 1 found lowercased)"
    )


def test_a_fresh_run_starts_from_the_files_vectors(tiny_corpus, tmp_path):
    vectors = write(
        tmp_path / "v.txt",
        "speak. " + " ".join(["0.25"] * 8) + "\n"
        "citizen: " + " ".join(str(i / 8) for i in range(8)) + "\n"  # "Citizen:" by its lowercase form
        "zebra " + " ".join(["9"] * 8) + "\n",
    )
    plain, _ = built(tiny_config(tiny_corpus, *WORD), tmp_path / "plain")
    plain.close()
    trainer, log = built(tiny_config(tiny_corpus, *WORD, f"model.init_embeddings={vectors}"), tmp_path / "run")
    try:
        words, weight = trainer.tokenizer.words, embedding(trainer.model)
        assert torch.equal(weight[words.index("speak.")], torch.full((8,), 0.25))
        assert torch.equal(weight[words.index("Citizen:")], torch.arange(8) / 8)
        others = [i for i, w in enumerate(words) if w not in ("speak.", "Citizen:")]
        assert torch.equal(weight[others], embedding(plain.model)[others])  # the same random draw as without
        assert log[0] == (
            f"2 of 25 vocabulary words found in {vectors} (8.0%); the other 23 keep their random init "
            "(exact spelling first, then lowercase: 1 found lowercased)"
        )
    finally:
        trainer.close()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_tied_decoder_and_a_bidirectional_model_start_from_them_too(tiny_corpus, tmp_path, bidirectional):
    vectors = write(tmp_path / "v.txt", "speak. " + " ".join(["0.5"] * 16) + "\n")
    config = tiny_config(
        tiny_corpus,
        *WORD,
        "model.embed_size=16",
        "model.tie_weights=true",
        f"model.bidirectional={str(bidirectional).lower()}",
        f"model.init_embeddings={vectors}",
    )
    trainer, log = built(config, tmp_path / "run")
    try:
        row = trainer.tokenizer.words.index("speak.")
        decoder = dict(trainer.model.named_parameters(remove_duplicate=False))["decoder.weight"]
        assert torch.equal(decoder[row], torch.full((16,), 0.5))
        assert log[0].endswith("; the decoder shares the embedding (model.tie_weights), so it starts from them too")
    finally:
        trainer.close()


def test_export_then_import_gives_the_same_embedding(tiny_corpus, tmp_path):
    trained, _ = train_run(tiny_config(tiny_corpus, *WORD), tmp_path / "trained")
    words = trained.tokenizer.words
    for form in ("glove", "word2vec"):
        out = tmp_path / f"{form}.txt"
        result = invoke("export-embeddings", tmp_path / "trained" / "best.pt", "--out", out, "--format", form)
        assert result.exit_code == 0, result.output
        assert f"wrote 25 vectors of 8 numbers to {out} ({form} text)" in result.output
        lines = out.read_text(encoding="utf-8").splitlines()
        if form == "word2vec":
            assert lines.pop(0) == "25 8"
        assert [line.split(" ")[0] for line in lines] == words  # every word, <unk> and <eos> too, in id order
        best = load_checkpoint(tmp_path / "trained" / "best.pt")["model"]["embedding.weight"]
        fresh, log = built(tiny_config(tiny_corpus, *WORD, f"model.init_embeddings={out}"), tmp_path / f"from-{form}")
        try:
            assert torch.equal(embedding(fresh.model), best)  # 9 significant digits give back each float32
        finally:
            fresh.close()
        assert log[0].startswith(f"25 of 25 vocabulary words found in {out} (100.0%)")


def test_export_refuses_to_overwrite_and_a_character_model(tiny_corpus, tmp_path):
    train_run(tiny_config(tiny_corpus, *WORD), tmp_path / "word")
    train_run(tiny_config(tiny_corpus), tmp_path / "char")
    out = write(tmp_path / "kept.txt", "mine\n")
    result = invoke("export-embeddings", tmp_path / "word" / "best.pt", "--out", out)
    assert (result.exit_code, result.output) == (2, f"Error: {out} exists: pass --overwrite to replace it\n")
    assert out.read_text() == "mine\n"
    result = invoke("export-embeddings", tmp_path / "word" / "best.pt", "--out", out, "--overwrite")
    assert result.exit_code == 0 and len(out.read_text().splitlines()) == 25
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    result = invoke("export-embeddings", tmp_path / "char" / "best.pt", "--out", tmp_path / "c.txt")
    assert result.exit_code == 2
    assert result.output.startswith("Error: export-embeddings needs a word model (tokenizer.kind word), not char")
    assert not (tmp_path / "c.txt").exists()


def vector_line(word: str, size: int = 8) -> str:
    return word + " " + " ".join(["0.5"] * size) + "\n"


REFUSALS = {  # file text (None: no file) -> (exit code, the line after "Error: ", {path} the file's)
    "size": (
        vector_line("speak.", 3),
        2,
        "{path} holds 3-dimensional vectors, the model's embedding is 8 "
        "(model.embed_size): set model.embed_size=3, or use vectors of size 8",
    ),
    "missing": (None, 1, "the word-vector file {path} does not exist (model.init_embeddings)"),
    "empty": ("\n", 1, "the word-vector file {path} is empty"),
    "short line": (
        vector_line("the") + vector_line("speak.", 5),
        1,
        "{path}:2: expected a word and 8 numbers (as the first line says), found 6 fields",
    ),
    "not a number": (
        vector_line("the") + "speak. 1 2 3 x 5 6 7 8\n",
        1,
        "{path}:2: expected a word and 8 numbers, found b'speak. 1 2 3 x 5 6 7 8\\n' (only the "
        "text formats are read, uncompressed; gensim writes one with binary=False)",
    ),
    "not finite": (
        vector_line("the") + "speak. 1 2 3 nan 5 6 7 8\n",
        1,
        "{path}:2: a vector holds a number that is not finite",
    ),
    "truncated": (
        "3 8\n" + vector_line("the") + vector_line("speak."),
        1,
        "{path}: its word2vec header promises 3 vectors, it holds 2: the file is truncated or was edited",
    ),
    "no word found": (vector_line("zebra"), 1, "none of the 25 vocabulary words is in {path}: is it the right file?"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_is_one_line_and_leaves_no_run(tiny_corpus, tmp_path, case):
    text, code, message = REFUSALS[case]
    vectors = tmp_path / "vectors.txt"
    if text is not None:
        write(vectors, text)
    config = tmp_path / "run.yaml"
    dump_yaml(tiny_config(tiny_corpus, *WORD, f"model.init_embeddings={vectors}"), config)
    result = invoke("train", "--config", config, "--run-dir", tmp_path / "run", "--no-progress")
    assert result.exit_code == code
    assert result.output.splitlines()[-1] == "Error: " + message.format(path=vectors)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_character_model_is_refused_before_anything_is_read(tiny_corpus, tmp_path):
    result = invoke(
        "train",
        "--run-dir",
        tmp_path / "run",
        f"data.corpus={tiny_corpus}",
        f"model.init_embeddings={tmp_path / 'no-such-file.txt'}",
    )
    assert result.exit_code == 2
    assert result.output == (
        "Error: invalid configuration: model.init_embeddings needs tokenizer.kind word (got char): word "
        "vectors are whole words\n"
    )


def test_a_resumed_run_keeps_its_weights_when_the_vectors_are_gone(tiny_corpus, tmp_path):
    vectors = write(tmp_path / "v.txt", vector_line("speak."))
    train_run(
        tiny_config(tiny_corpus, *WORD, f"model.init_embeddings={vectors}", "train.max_steps=3"), tmp_path / "run"
    )
    vectors.unlink()  # were it read again, the resume would fail
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    config = tiny_config(tiny_corpus, *WORD, f"model.init_embeddings={vectors}", "train.max_steps=6")
    trainer = Trainer(config, tmp_path / "run", resume_from=saved, progress=False, log=lambda _: None)
    try:
        trainer.setup()
        assert torch.equal(embedding(trainer.model), saved["model"]["embedding.weight"])
    finally:
        trainer.close()
    assert invoke("sample", tmp_path / "run" / "last.pt", "--length", 5, "--seed", 1).exit_code == 0  # nor by sample
