"""Every registered model keeps the ``Matcher`` contract (timm's per-model tests): a new model is done when it passes.

Each model is built small (the fields of ``TINY`` its config has) and checked for: encode/score shapes and finite
scores; a gradient on every trainable parameter through the training objective the trainer uses; save → load
giving identical scores; the scoring engine (tiled, captions sorted by length) equal to the model's own naive
``score`` of all pairs; and the optional hooks consistent with what they declare (``is_embedding``,
``vocab_size``, ``can_explain``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from itmatch.checkpoint import load_model, save_model
from itmatch.models import create_model, list_models
from itmatch.models.base import Matcher, TextEncoding
from itmatch.models.registry import embedding_models
from itmatch.scoring import score_matrix
from itmatch.train.config import LossSection
from itmatch.train.objective import TrainingObjective

#: Small sizes for any config that has these fields (heads must divide embed_size).
TINY = dict(vocab_size=30, img_dim=12, word_dim=8, embed_size=16, sim_dim=8, num_regions=5, relation_heads=2,
            instance_heads=2, instance_warmup=0, triplet_dim=16)
N_IMAGES, N_CAPTIONS, REGIONS = 3, 7, 5
#: Parameters whose gradient is zero by construction: a bias that adds the same number to every logit of a
#: softmax (SGRAF's self-attention and graph-key biases) cancels in it, and so does one before a training
#: BatchNorm (SAF's gate, whose gradient is then rounding noise, exactly 0 on two threads).
CANCELLING = ("embedding_common.0.bias", "graph_key_w.bias", "attn_sim_w.bias")


def tiny_model(name: str) -> Matcher:
    fields = {f.name for f in dataclasses.fields(type(create_model(name).config))}
    torch.manual_seed(0)
    return create_model(name, **{k: v for k, v in TINY.items() if k in fields})


def inputs(seed: int = 0) -> tuple[torch.Tensor, list[list[int]]]:
    """Region features (N_IMAGES, REGIONS, img_dim) and N_CAPTIONS token lists of lengths 2..8, unsorted."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(N_IMAGES, REGIONS, TINY["img_dim"], generator=gen)
    lengths = [5, 2, 8, 3, 8, 4, 6]
    tokens = [torch.randint(4, TINY["vocab_size"], (n,), generator=gen).tolist() for n in lengths]
    return features, tokens


def padded(tokens: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(t) for t in tokens])
    out = torch.zeros(len(tokens), int(lengths.max()), dtype=torch.int64)
    for row, ids in enumerate(tokens):
        out[row, :len(ids)] = torch.tensor(ids)
    return out, lengths


def naive_scores(model: Matcher, features: torch.Tensor, tokens: list[list[int]]) -> torch.Tensor:
    """All pairs at once, in caption order, padded to the longest caption: the slow literal reference."""
    with torch.no_grad():
        return model.score(model.encode_images(features), model.encode_texts(*padded(tokens)))


@pytest.fixture(scope="module", params=list_models())
def model(request) -> Matcher:
    return tiny_model(request.param).eval()


def test_every_builtin_model_is_registered() -> None:
    assert {"sgr", "saf", "ave", "sgraf_joint", "tshsr", "tshsr_i2t", "tshsr_t2i", "vse", "hrem"} <= set(list_models())


def test_embedding_models_are_named_without_building_one() -> None:
    """The names messages offer where an embedding model is needed are exactly the models that are one."""
    assert embedding_models() == sorted(n for n in list_models() if tiny_model(n).is_embedding)
    assert {"vse", "hrem"} <= set(embedding_models())


def test_encode_and_score_shapes(model: Matcher) -> None:
    features, tokens = inputs()
    with torch.no_grad():
        images = model.encode_images(features)
        texts = model.encode_texts(*padded(tokens))
        scores = model.score(images, texts)
    assert len(images) == N_IMAGES and len(texts) == N_CAPTIONS
    assert scores.shape == (N_IMAGES, N_CAPTIONS) and scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())
    assert model.head_scores(images, texts).shape[1:] == (N_IMAGES, N_CAPTIONS)
    part = model.score(images.select(slice(1, 3)), texts.select(torch.tensor([4, 0])))
    torch.testing.assert_close(part, scores[1:3][:, [4, 0]], rtol=0, atol=1e-6)


def test_declared_hooks_match_the_model(model: Matcher) -> None:
    features, tokens = inputs()
    assert model.vocab_size == (None if model.tokenize is not None else TINY["vocab_size"])
    with torch.no_grad():
        images, texts = model.encode_images(features), model.encode_texts(*padded(tokens))
    if model.is_embedding:
        assert model.pair_bytes_per_word() == 0 and model.has_own_objective
        for enc in (images, texts):
            torch.testing.assert_close(enc.emb.norm(dim=1), torch.ones(len(enc)), rtol=0, atol=1e-5)
        torch.testing.assert_close(model.score(images, texts), images.emb @ texts.emb.T, rtol=0, atol=1e-6)
    else:
        assert model.pair_bytes_per_word() > 0 and isinstance(texts, TextEncoding)
    assert model.can_explain == (not model.is_embedding)
    if model.can_explain:
        with torch.no_grad():
            explained = model.explain(images.select(slice(1, 2)), texts.select(slice(2, 3)))
        assert explained["attention"].shape == (8, REGIONS)
        torch.testing.assert_close(explained["attention"].sum(1), torch.ones(8), rtol=0, atol=1e-5)
        torch.testing.assert_close(explained["score"], model.score(images, texts)[1, 2], rtol=0, atol=1e-6)
    else:
        with pytest.raises(NotImplementedError, match="cannot explain"):
            model.explain(images, texts)


def test_every_trainable_parameter_gets_a_gradient(model: Matcher) -> None:
    """Through the trainer's own objective (the model's loss, or the ranking loss of its score heads); HREM's
    instance level is on (warm-up 0)."""
    features, tokens = inputs(seed=1)
    objective = TrainingObjective(model, LossSection(margin=0.2, hardest_negative=False, mask_same_image=False))
    model.train()
    try:
        torch.manual_seed(0)
        loss, logs = objective(features, *padded(tokens[:N_IMAGES]), torch.arange(N_IMAGES), step=1, epoch=5)
        model.zero_grad()
        loss.backward()
    finally:
        model.eval()
    assert bool(torch.isfinite(loss)) and float(loss.detach()) > 0 and logs["loss"] == pytest.approx(float(loss.detach()))
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{model.model_name}: no gradient reaches {missing}"
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert bool(torch.isfinite(p.grad).all()), name
    idle = [name for name, p in model.named_parameters()
            if p.grad is not None and float(p.grad.abs().sum()) == 0 and not name.endswith(CANCELLING)]
    assert not idle, f"{model.model_name}: a zero gradient reaches {idle}"


def test_save_and_load_give_identical_scores(model: Matcher, tmp_path) -> None:
    features, tokens = inputs(seed=2)
    with torch.no_grad():  # move BatchNorm statistics off their initial values, so they must be saved too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "model.safetensors"
    save_model(path, model)
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.model_name == model.model_name
    assert loaded.model_args() == model.model_args()
    assert torch.equal(naive_scores(loaded, features, tokens), naive_scores(model, features, tokens))


@pytest.mark.parametrize("memory", [1, 1 << 30])
def test_engine_equals_naive_scoring(model: Matcher, memory: int) -> None:
    """Tiles of one image (``memory`` 1 byte) or of all, captions in chunks of 3 sorted by length."""
    features, tokens = inputs(seed=3)
    engine = score_matrix(model, features.numpy(), tokens, max_memory=memory, caption_chunk=3)
    np.testing.assert_allclose(engine, naive_scores(model, features, tokens).numpy(), rtol=0, atol=1e-5)
