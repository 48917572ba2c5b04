import errno
import gc
import weakref

import pytest
import torch

from helpers import tiny_config, train_run
from rnnlm import checkpoint
from rnnlm.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from rnnlm.errors import CheckpointError


@pytest.fixture
def trained(tiny_corpus, tmp_path):
    return train_run(tiny_config(tiny_corpus), tmp_path / "run")[0]


def test_a_checkpoint_alone_rebuilds_the_model(trained, tmp_path):
    loaded = load_model(tmp_path / "run" / "last.pt")
    assert loaded.config == trained.config
    assert loaded.tokenizer.state_dict() == trained.tokenizer.state_dict()
    tokens = torch.randint(0, loaded.tokenizer.vocab_size, (5, 2))
    trained.model.eval()
    expected, _ = trained.model.prefill(tokens, trained.model.init_state(2))
    actual, _ = loaded.model.prefill(tokens, loaded.model.init_state(2))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)



def test_a_loaded_model_does_not_keep_the_checkpoints_tensors(trained, tmp_path, monkeypatch):
    """What sample, eval and fill hold for the whole command is the model, not a second copy of the file."""
    read = []

    def recording(path, **kwargs):
        payload = load_checkpoint(path, **kwargs)
        read.extend(weakref.ref(tensor) for tensor in payload["model"].values())
        return payload

    monkeypatch.setattr(checkpoint, "load_checkpoint", recording)
    loaded = load_model(tmp_path / "run" / "last.pt")
    gc.collect()
    assert read and loaded.model is not None
    assert [ref for ref in read if ref() is not None] == []

def test_checkpoints_load_with_weights_only(trained, tmp_path):
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert payload["format"] == "rnnlm-checkpoint" and payload["format_version"] == FORMAT_VERSION


def test_a_failed_write_leaves_the_previous_checkpoint_intact(trained, tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    before = path.read_bytes()
    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="no space left on device while writing .*last.pt; the previous checkpoint is intact"):
        save_checkpoint({"model": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_truncated_checkpoint(trained, tmp_path):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes((tmp_path / "run" / "last.pt").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated, damaged, or not a checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("content,fragment", [
    (b"", "is empty"),
    (b"hello, I am not a checkpoint\n", "truncated, damaged, or not a checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, fragment):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)


def test_a_pytorch_file_that_is_not_rnnlm(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="a PyTorch file but not an rnnlm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_a_pickled_object_is_refused(tmp_path):
    torch.save({"format": "rnnlm-checkpoint", "obj": object()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="Python objects rnnlm does not load"):
        load_checkpoint(tmp_path / "obj.pt")


def test_a_newer_format_is_refused(trained, tmp_path):
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}.*upgrade rnnlm"):
        load_checkpoint(tmp_path / "future.pt")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_fit_the_config(trained, tmp_path):
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    payload["config"]["model"]["hidden_size"] = 32
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit the saved configuration"):
        load_model(tmp_path / "mismatch.pt")
