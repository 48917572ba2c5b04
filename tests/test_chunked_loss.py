"""The full softmax's training loss without torch's four (N, V) tensors: model.loss_chunk (a few rows of
logits at a time) and model.fused_loss (one buffer, kept between steps)."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODEL, tiny_config, train_run
from rnnlm.config import load_config
from rnnlm.data.batching import PAD
from rnnlm.errors import ConfigError
from rnnlm.models.lm import RNNLM
from rnnlm.models.softmax import FusedCrossEntropy, Workspace, chunked_cross_entropy, fused_cross_entropy


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


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("block,bias", [(800, True), (350, True), (1, False), (10**6, False)])
def test_fused_loss_and_gradients_equal_the_plain_ones(dtype, tolerance, block, bias, monkeypatch):
    monkeypatch.setattr(FusedCrossEntropy, "BLOCK", block)  # softmax blocks of 16, 7, 1 and all 30 rows of 50
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 12, dtype=dtype, generator=generator, requires_grad=True)
    decoder = torch.nn.Linear(12, 50, bias=bias).to(dtype)
    torch.nn.init.normal_(decoder.weight, std=2.0, generator=generator)  # peaked rows: logits far apart
    targets = torch.randint(0, 50, (30,), generator=generator)
    targets[[3, 17]] = PAD
    parameters = [hidden, decoder.weight, *([decoder.bias] if bias else [])]
    plain = F.cross_entropy(decoder(hidden), targets, ignore_index=PAD, reduction="sum")
    plain_grads = torch.autograd.grad(plain * 0.5, parameters)
    fused = fused_cross_entropy(hidden, decoder, targets, Workspace())
    fused_grads = torch.autograd.grad(fused * 0.5, parameters)
    torch.testing.assert_close(fused, plain, rtol=tolerance, atol=tolerance)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert not fused_grads[0][[3, 17]].any()  # PAD rows get no gradient


def test_the_bf16_fused_loss_matches_autocast_and_keeps_its_buffer_in_bf16():
    generator = torch.Generator().manual_seed(2)
    decoder = torch.nn.Linear(32, 300)
    targets = torch.randint(0, 300, (40,), generator=generator)
    targets[5] = PAD
    results = []
    for fused in (True, False):
        hidden = torch.randn(40, 32, generator=torch.Generator().manual_seed(3)).bfloat16().requires_grad_()
        workspace = Workspace()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (fused_cross_entropy(hidden, decoder, targets, workspace, torch.bfloat16) if fused else
                    F.cross_entropy(decoder(hidden), targets, ignore_index=PAD, reduction="sum"))
        grads = torch.autograd.grad(loss, [hidden, decoder.weight, decoder.bias])
        assert loss.dtype == torch.float32 and [g.dtype for g in grads] == [torch.bfloat16] + 2 * [torch.float32]
        results.append((loss, *grads))
        if fused:
            assert workspace.buffer is not None and workspace.buffer.dtype == torch.bfloat16
    for a, b in zip(*results):  # the same bf16 products, rounded at different points
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_the_bf16_fused_loss_keeps_the_gradient_of_a_confident_prediction():
    decoder = torch.nn.Linear(4, 10)
    with torch.no_grad():
        decoder.weight.zero_()
        decoder.bias.zero_()
        decoder.bias[3] = 9.0  # p(3) = e^9 / (e^9 + 9) = 0.99889: bf16 rounds it to 1
    hidden = torch.zeros(1, 4, dtype=torch.bfloat16)
    loss = fused_cross_entropy(hidden, decoder, torch.tensor([3]), Workspace(), torch.bfloat16)
    (grad_bias,) = torch.autograd.grad(loss, [decoder.bias])
    exact = torch.softmax(decoder.bias.detach().double(), dim=0)[3] - 1  # -0.00111
    assert grad_bias[3].item() == pytest.approx(exact.item(), rel=0.01)


def test_the_fused_loss_reuses_its_buffer_but_never_shares_it_between_live_graphs():
    generator = torch.Generator().manual_seed(1)
    decoder = torch.nn.Linear(6, 40).double()
    workspace = Workspace()
    hiddens = [torch.randn(10, 6, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]
    targets = torch.randint(0, 40, (10,), generator=generator)
    first = fused_cross_entropy(hiddens[0], decoder, targets, workspace)
    second = fused_cross_entropy(hiddens[1], decoder, targets, workspace)  # before the first's backward
    grads = [torch.autograd.grad(loss, hidden)[0] for loss, hidden in [(second, hiddens[1]), (first, hiddens[0])]]
    for hidden, grad in zip(reversed(hiddens), grads):
        plain = F.cross_entropy(decoder(hidden), targets, reduction="sum")
        torch.testing.assert_close(grad, torch.autograd.grad(plain, hidden)[0], rtol=1e-12, atol=1e-12)
    kept = workspace.buffer
    assert kept is not None and kept.numel() == 10 * 40
    again = fused_cross_entropy(hiddens[0][:4], decoder, targets[:4], workspace)  # fewer rows: the same memory
    assert workspace.buffer is None  # taken while its graph lives
    again.backward()
    assert workspace.buffer is kept


@pytest.mark.parametrize("tied", [False, True])
def test_a_model_trains_the_same_with_the_fused_loss_chunks_and_torch(tiny_corpus, tmp_path, tied):
    common = ["model.embed_size=16", f"model.tie_weights={str(tied).lower()}", "train.max_steps=12",
              "optim.name=adam", "optim.lr=0.01"]
    weights = []
    for name, settings in {"torch": ["model.fused_loss=false"], "fused": [],
                           "chunks": ["model.loss_chunk=5"]}.items():
        trainer, summary = train_run(tiny_config(tiny_corpus, *common, *settings), tmp_path / name)
        assert (trainer.model.workspace.buffer is not None) == (name == "fused")  # the path that ran
        weights.append([p.detach() for p in trainer.model.parameters()])
        assert summary.last_val is not None
        weights[-1].append(torch.tensor(summary.last_val.loss, dtype=torch.float64))  # evaluation chunks too
    for other in weights[1:]:
        for a, b in zip(weights[0], other):
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
