"""model.loss_chunk: the full softmax's loss scored a few rows of logits at a time."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODEL, tiny_config
from rnnlm.config import load_config
from rnnlm.data.batching import PAD
from rnnlm.errors import ConfigError
from rnnlm.models.lm import RNNLM
from rnnlm.models.softmax import chunked_cross_entropy
from rnnlm.train import Trainer


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_loss_and_gradients_equal_the_plain_ones(dtype, tolerance, chunk):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 12, dtype=dtype, generator=generator, requires_grad=True)
    decoder = torch.nn.Linear(12, 50).to(dtype)
    targets = torch.randint(0, 50, (30,), generator=generator)
    targets[[3, 17]] = PAD
    plain = F.cross_entropy(decoder(hidden), targets, ignore_index=PAD, reduction="sum")
    plain_grads = torch.autograd.grad(plain * 0.5, [hidden, decoder.weight, decoder.bias])
    chunked = chunked_cross_entropy(hidden, decoder, targets, chunk)
    chunked_grads = torch.autograd.grad(chunked * 0.5, [hidden, decoder.weight, decoder.bias])
    torch.testing.assert_close(chunked, plain, rtol=tolerance, atol=tolerance)
    for a, b in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert not chunked_grads[0][[3, 17]].any()  # PAD rows get no gradient


def test_a_tied_model_trains_the_same_with_chunks(tiny_corpus, tmp_path):
    common = ["model.embed_size=16", "model.tie_weights=true", "train.max_steps=12", "optim.name=adam",
              "optim.lr=0.01"]
    weights = []
    for chunk in (0, 5):
        trainer = Trainer(tiny_config(tiny_corpus, *common, f"model.loss_chunk={chunk}"), tmp_path / str(chunk),
                          progress=False, log=lambda m: None)
        try:
            trainer.setup()
            summary = trainer.fit()
        finally:
            trainer.close()
        weights.append([p.detach() for p in trainer.model.parameters()])
        assert summary.last_val is not None
        weights[-1].append(torch.tensor(summary.last_val.loss, dtype=torch.float64))  # evaluation chunks too
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_eval_scores_like_the_plain_model():
    config = load_config(None, [*TINY_MODEL, "model.loss_chunk=3"]).model
    torch.manual_seed(0)
    chunked = RNNLM(20, config).double().eval()
    plain = RNNLM(20, load_config(None, TINY_MODEL).model).double().eval()
    plain.load_state_dict(chunked.state_dict())
    inputs, targets = torch.randint(0, 20, (5, 2)), torch.randint(0, 20, (5, 2))
    with torch.inference_mode():
        a = chunked(inputs, targets, chunked.init_state(2)).nll
        b = plain(inputs, targets, plain.init_state(2)).nll
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("overrides,message", [
    (["model.loss_chunk=-1"], "model.loss_chunk must be 0 or more"),
    (["model.loss_chunk=8", "model.bidirectional=true"], "model.loss_chunk applies to the full softmax"),
    (["model.loss_chunk=8", "tokenizer.kind=word", "model.softmax=adaptive"], "model.loss_chunk applies"),
])
def test_chunks_only_where_they_apply(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
