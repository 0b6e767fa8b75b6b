"""TSHSR: the batched model equals the literal per-caption reference of the paper's equations, each ablation
switch changes only what it names, and the model trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import sharpen as sharpen_to, SMALL, small_model
from reference_tshsr import reference_scores, reference_vectors
from train_support import small_config, synthetic_data

from itmatch.checkpoint import load_model, save_model
from itmatch.errors import ItmatchError
from itmatch.models import Ensemble, create_model
from itmatch.scoring import pad_tokens, score_matrix
from itmatch.train import train

# 1- and 2-word captions (shorter than the 3×3 convolution's reach) among long ones, in unsorted order.
LENGTHS = [1, 40, 5, 5, 2, 17, 1, 9, 3, 33, 12, 2, 7, 4]

VARIANTS = {
    "tshsr": ("tshsr", {}),
    "conv-off": ("tshsr", {"hsr_conv": False}),
    "one-layer": ("tshsr", {"hsr_layers": 1}),
    "no-layers": ("tshsr", {"hsr_layers": 0}),
    "both-hsr": ("tshsr", {"t2i_hsr": True}),
    "i2t": ("tshsr_i2t", {}),
    "t2i": ("tshsr_t2i", {}),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds synchronisation, which costs up to 10× on a shared
    machine whose cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(n_images: int, lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(n_images, 36, SMALL["img_dim"], generator=gen)
    return feats, [torch.randint(4, SMALL["vocab_size"], (n,), generator=gen).tolist() for n in lengths]


def excite(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Strong random 3×3 kernels, so the gate varies across the relation matrix and a wrong border or padding
    shows (the default init gives gates within a few hundredths of each other)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 8)
    return model


def sharpen(model: torch.nn.Module, feats: torch.Tensor, captions: list[list[int]]) -> torch.nn.Module:
    """``conftest.sharpen`` with this file's reference scores."""
    return sharpen_to(model, reference_scores(model, feats, captions))


def model_for(variant: str, seed: int = 3) -> torch.nn.Module:
    name, overrides = VARIANTS[variant]
    return excite(small_model(name, seed=seed, **overrides), seed)


def batch_vectors(model: torch.nn.Module, feats: torch.Tensor, captions: list[list[int]]) -> dict:
    """Stream vectors of one padded tile of all images × all captions."""
    tokens, lengths = pad_tokens(captions)
    with torch.no_grad():
        return model.sim_enc.stream_vectors(model.encode_images(feats), model.encode_texts(tokens, lengths))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_equals_reference(variant):
    feats, captions = make_inputs(9, LENGTHS)
    model = sharpen(model_for(variant), feats, captions)
    expected = reference_scores(model, feats, captions).numpy()
    assert expected.std() > 0.2  # the comparison is not between near-constant matrices
    for caption_chunk, image_chunk in ((5, 4), (128, None)):
        got = score_matrix(model, feats.numpy(), captions, caption_chunk=caption_chunk, image_chunk=image_chunk)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["tshsr", "both-hsr", "no-layers"])
def test_stream_vectors_equal_reference(variant):
    """Every coordinate of each stream's output, not only their projection on the read-out."""
    feats, captions = make_inputs(5, LENGTHS, seed=2)
    model = model_for(variant, seed=4)
    expected = reference_vectors(model, feats, captions)
    got = batch_vectors(model, feats, captions)
    assert got.keys() == expected.keys()
    for name in expected:
        assert float(expected[name].std()) > 1e-2
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["tshsr", "both-hsr"])
def test_caption_score_does_not_depend_on_its_batch(variant):
    """In float64 a caption scored alone (its tile trimmed to its own length) equals it scored in a padded tile
    to rounding; through the float32 engine, to 1e-5."""
    feats, captions = make_inputs(4, [2, 30, 1, 30, 8, 1], seed=10)
    model = sharpen(model_for(variant, seed=9), feats, captions)
    tokens, lengths = pad_tokens(captions)
    wide = model.double()
    with torch.no_grad():
        images, texts = wide.encode_images(feats.double()), wide.encode_texts(tokens, lengths)
        together = wide.score(images, texts)
        for j in range(len(captions)):
            alone = wide.score(images, texts.select(slice(j, j + 1)))
            torch.testing.assert_close(alone[:, 0], together[:, j], rtol=0, atol=1e-12)
    model.float()
    together = score_matrix(model, feats.numpy(), captions, caption_chunk=6)
    for j, caption in enumerate(captions):
        alone = score_matrix(model, feats.numpy(), [caption])
        np.testing.assert_allclose(alone[:, 0], together[:, j], rtol=0, atol=1e-5)


def transplant(source: torch.nn.Module, name: str, **overrides) -> tuple[torch.nn.Module, set[str], set[str]]:
    """A ``name`` model with ``source``'s weights where the names match; returns it with the missing and
    unexpected state-dict keys."""
    model = create_model(name, **{**SMALL, **overrides}).eval()
    result = model.load_state_dict(source.state_dict(), strict=False)
    return model, set(result.missing_keys), set(result.unexpected_keys)


def test_conv_off_equals_a_gate_of_one():
    """hsr_conv=False is R' = R: the same model with a convolution that outputs +100 everywhere (sigmoid = 1)."""
    feats, captions = make_inputs(4, LENGTHS, seed=5)
    model = model_for("both-hsr", seed=5)
    off, missing, unexpected = transplant(model, "tshsr", hsr_conv=False, t2i_hsr=True)
    assert not missing and unexpected and all(".conv." in k for k in unexpected)
    conv_on = batch_vectors(model, feats, captions)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.fill_(100.0)
    saturated, conv_off = batch_vectors(model, feats, captions), batch_vectors(off, feats, captions)
    for name in ("i2t", "t2i"):
        torch.testing.assert_close(conv_off[name], saturated[name], rtol=0, atol=1e-6)
        assert float((conv_on[name] - conv_off[name]).abs().max()) > 1e-2


def test_fewer_layers_equal_identity_layers():
    """hsr_layers=1 is the 3-layer model whose layers 2 and 3 are the identity (W_r = 0 leaves S* = S)."""
    feats, captions = make_inputs(4, LENGTHS, seed=6)
    model = model_for("tshsr", seed=6)
    one, missing, unexpected = transplant(model, "tshsr", hsr_layers=1)
    assert not missing and {k.split(".")[3] for k in unexpected} == {"1", "2"}
    three = batch_vectors(model, feats, captions)["i2t"]
    with torch.no_grad():
        for layer in model.sim_enc.i2t.hsr[1:]:
            layer.w_r.weight.zero_()
            layer.w_r.bias.zero_()
    torch.testing.assert_close(batch_vectors(one, feats, captions)["i2t"], batch_vectors(model, feats, captions)["i2t"],
                               rtol=0, atol=1e-6)
    assert float((three - batch_vectors(one, feats, captions)["i2t"]).abs().max()) > 1e-2


def test_streams_switch_removes_one_stream_and_nothing_else():
    """i2t / t2i alone keep the other weights and give the same stream vector; both add them (Eq. 8)."""
    feats, captions = make_inputs(4, LENGTHS, seed=7)
    model = model_for("tshsr", seed=7)
    both = batch_vectors(model, feats, captions)
    for name, other in (("i2t", "t2i"), ("t2i", "i2t")):
        single, missing, unexpected = transplant(model, "tshsr", streams=name)
        assert not missing and unexpected and all(k.startswith(f"sim_enc.{other}.") for k in unexpected)
        alone = batch_vectors(single, feats, captions)
        assert alone.keys() == {name}
        torch.testing.assert_close(alone[name], both[name], rtol=0, atol=0)
    tokens, lengths = pad_tokens(captions)
    with torch.no_grad():
        scores = model(feats, tokens, lengths)
    readout = torch.sigmoid(model.sim_enc.sim_eval_w(both["i2t"] + both["t2i"])).squeeze(2)
    torch.testing.assert_close(scores, readout, rtol=0, atol=1e-6)


def test_t2i_hsr_replaces_the_pooling_only():
    """t2i_hsr adds HSR layers to the text-to-image stream; the image-to-text stream is untouched."""
    feats, captions = make_inputs(4, LENGTHS, seed=8)
    model = model_for("tshsr", seed=8)
    reasoned, missing, unexpected = transplant(model, "tshsr", t2i_hsr=True)
    assert not unexpected and missing and all(k.startswith("sim_enc.t2i.hsr.") for k in missing)
    pooled, hsr = batch_vectors(model, feats, captions), batch_vectors(reasoned, feats, captions)
    torch.testing.assert_close(hsr["i2t"], pooled["i2t"], rtol=0, atol=0)
    assert float((hsr["t2i"] - pooled["t2i"]).abs().max()) > 1e-2


def test_inner_product_readout_is_the_logit_of_the_sigmoid_one():
    """readout="inner" scores w_eval · S* (Eq. 9's inner product): with the same weights, exactly the sigmoid
    read-out's logit, and equal to the reference's; the model's other parts are untouched."""
    feats, captions = make_inputs(6, LENGTHS[:8], seed=5)
    model = sharpen(model_for("tshsr", seed=6), feats, captions)
    inner = create_model("tshsr", **{**SMALL, "readout": "inner"}).eval()
    inner.load_state_dict(model.state_dict())
    got = score_matrix(inner, feats.numpy(), captions)
    np.testing.assert_allclose(got, reference_scores(inner, feats, captions).numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(torch.sigmoid(torch.as_tensor(got)).numpy(), score_matrix(model, feats.numpy(),
                                                                                         captions), atol=1e-6)
    assert got.min() < 0 or got.max() > 1  # not squashed


@pytest.mark.parametrize("overrides", [{"hsr_layers": 2}, {"hsr_layers": 1, "t2i_hsr": True, "hsr_conv": False}])
def test_unnormalised_relation_equals_reference(overrides):
    """relation_norm="none" (R of Eq. 4 as printed): the tiles' padded relation is zero past each caption, as
    the reference's unpadded R. Without the softmax, node coordinates grow with L and the layers (to ~280 here),
    so the comparison is partly relative."""
    feats, captions = make_inputs(5, LENGTHS, seed=2)
    model = excite(small_model("tshsr", seed=4, relation_norm="none", **overrides), 4)
    expected = reference_vectors(model, feats, captions)
    got = batch_vectors(model, feats, captions)
    for name in expected:
        assert float(expected[name].std()) > 1e-2
        torch.testing.assert_close(got[name], expected[name], rtol=2e-5, atol=1e-5)


def test_unnormalised_relation_differs_from_the_softmax_one():
    feats, captions = make_inputs(4, LENGTHS[:6], seed=7)
    model = model_for("tshsr", seed=8)
    raw = create_model("tshsr", **{**SMALL, "relation_norm": "none"}).eval()
    raw.load_state_dict(model.state_dict())
    a, b = score_matrix(model, feats.numpy(), captions), score_matrix(raw, feats.numpy(), captions)
    assert np.abs(a - b).max() > 1e-4


def test_config_errors():
    with pytest.raises(ItmatchError, match="streams"):
        create_model("tshsr", streams="t2v")
    with pytest.raises(ItmatchError, match="t2i_hsr"):
        create_model("tshsr", streams="i2t", t2i_hsr=True)
    with pytest.raises(ItmatchError, match="tshsr_i2t"):
        create_model("tshsr_i2t", streams="both")
    with pytest.raises(ItmatchError, match="hsr_layers"):
        create_model("tshsr", hsr_layers=-1)
    with pytest.raises(ItmatchError, match="readout must be one of sigmoid, inner, got 'dot'"):
        create_model("tshsr", readout="dot")
    with pytest.raises(ItmatchError, match="relation_norm must be one of softmax, none"):
        create_model("tshsr", relation_norm="l1")


def test_every_parameter_gets_a_gradient():
    for variant in ("tshsr", "both-hsr"):
        model = model_for(variant).train()
        feats, captions = make_inputs(3, [6, 1, 2, 9])
        tokens, lengths = pad_tokens(captions)
        scores = model(feats, tokens, lengths)
        assert scores.shape == (3, 4) and torch.isfinite(scores).all()
        scores.sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            # SGRAF's self-attention keeps a bias right before its softmax (the release's layout): it cancels.
            assert name.endswith("embedding_common.0.bias") or float(p.grad.abs().sum()) > 0, name


def test_save_load_and_ensemble(tmp_path):
    feats, captions = make_inputs(5, LENGTHS[:8], seed=11)
    model = sharpen(model_for("t2i", seed=11), feats, captions)
    save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.model_name == "tshsr_t2i" and loaded.config == model.config
    before = score_matrix(model, feats.numpy(), captions)
    np.testing.assert_array_equal(score_matrix(loaded, feats.numpy(), captions), before)
    sgr = small_model("sgr", seed=12)
    together = score_matrix(Ensemble([model, sgr]), feats.numpy(), captions, caption_chunk=3)
    np.testing.assert_allclose(together, (before + score_matrix(sgr, feats.numpy(), captions)) / 2, rtol=0,
                               atol=1e-5)


def test_memory_estimate_bounds_a_tile():
    """pair_bytes_per_word × (L + 1) covers the text-to-image stream's per-pair K × d tensors from L = 7 on; the
    image-to-text stream alone is budgeted as SGR."""
    model = create_model("tshsr")
    cfg = model.config
    assert model.pair_bytes_per_word() * 8 >= 4 * 2 * cfg.num_regions * cfg.embed_size
    assert create_model("tshsr_i2t").pair_bytes_per_word() == create_model("sgr").pair_bytes_per_word()


def test_learns_on_planted_synthetic_data(tmp_path):
    """The trainer on the paper's recipe file at test size: 3 epochs on 200 planted images lift the dev rsum from
    chance (about 100 for 30 images × 150 captions) to over 200. Summed over all negatives with a raised learning
    rate, as the trainer's own test: from scratch the hardest-negative loss first collapses to equal scores and
    needs more steps than a test can afford."""
    data = synthetic_data(tmp_path / "data", train=200, dev=30, test=10)
    config = small_config("tshsr", "model.args.dropout=0.0", "schedule.epochs=3", "optim.lr=5e-3",
                          "loss.hardest_negative=false", batch_size=16)
    result = train(config, data=data, vocab=data / "vocab.json", out=tmp_path / "run", device="cpu",
                   progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result.epochs == 3 and losses[-1] < 0.7 * losses[0]
    assert result.best_rsum > 200


@pytest.mark.parametrize("padding, shape", [((1, 1), (7, 1, 17, 17)), ((0, 1), (7, 1, 3, 17))])
def test_relation_convolution_equals_conv2d_with_gradients(padding, shape):
    """The CPU path of Eq. 5's convolution (PyTorch's im2col kernel instead of oneDNN's) computes ``conv2d``, and
    its gradients for the maps, the kernel and the bias, against ``conv2d`` in float64 (the kernel's gradient sums
    thousands of terms, so float32 results differ by their summation order)."""
    from itmatch.models.tshsr import HSRLayer

    torch.manual_seed(0)
    layer = HSRLayer(8, conv=True)
    maps = torch.rand(shape, requires_grad=True)
    upstream = torch.linspace(-1, 1, int(np.prod(shape))).view(shape)
    got = layer._convolve(maps, padding)
    (got * upstream).sum().backward()
    ours = [maps.grad, layer.conv.weight.grad, layer.conv.bias.grad]
    exact = [t.detach().double().requires_grad_() for t in (maps, layer.conv.weight, layer.conv.bias)]
    expected = torch.nn.functional.conv2d(*exact, padding=padding)
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-6)
    for mine, theirs in zip(ours, exact):
        torch.testing.assert_close(mine, theirs.grad.float(), rtol=1e-5, atol=2e-5)
