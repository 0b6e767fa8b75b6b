"""VSE baseline: pooling, encoders, padding and batch independence, losses, save/load, learning on planted data.

The helpers ``tiny``, ``train_steps`` and ``evaluate_rsum`` are shared with ``test_hrem.py``.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from torch.nn.utils import clip_grad_norm_

from itmatch.checkpoint import load_model, save_model
from itmatch.data.precomp import load_split
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import load_vocab
from itmatch.loading import caption_tokens
from itmatch.metrics import retrieval_metrics
from itmatch.models import create_model
from itmatch.models.encoders import RegionMLPEncoder
from itmatch.models.pooling import GPO, Pool, mean_pool, topk_max_pool
from itmatch.models.vse import distance_weighted_triplet_loss
from itmatch.scoring import pad_tokens, score_matrix

TINY = dict(vocab_size=40, img_dim=20, word_dim=12, embed_size=32)
PLANTED_DIM = 64


def tiny(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A small random ``name`` model (HREM gets 4 attention heads)."""
    torch.manual_seed(seed)
    extra = dict(relation_heads=4, instance_heads=4) if name == "hrem" else {}
    return create_model(name, **{**TINY, **extra, **overrides})


def random_batch(n: int = 6, regions: int = 7, seed: int = 1, vocab: int = 40, img_dim: int = 20):
    """Features (n, regions, img_dim), token ids (n, 9) with lengths 2..9, <start>=1 first."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, regions, img_dim, generator=gen)
    lengths = torch.tensor([9, 5, 3, 9, 2, 7, 4, 6][:n])
    tokens = torch.randint(4, vocab, (n, 9), generator=gen)
    tokens[:, 0] = 1
    tokens[torch.arange(9)[None] >= lengths[:, None]] = 0
    return feats, tokens, lengths


def train_steps(model, data, steps: int, *, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                epoch_steps: int = 50) -> list[dict]:
    """``steps`` AdamW steps of ``model.training_loss`` on random caption batches of ``data``/train (an "epoch"
    every ``epoch_steps`` steps, so VSE∞'s summed-hinge warm-up epoch comes first)."""
    split, vocab = load_split(data, "train"), load_vocab(data / "vocab.json")
    tokens = caption_tokens(model, vocab, split.captions)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameter_groups(lr), weight_decay=1e-4)
    logs = []
    model.train()
    for step in range(steps):
        captions = rng.choice(split.n_captions, batch, replace=False)
        images = split.caption_image[captions]
        ids, lengths = pad_tokens([tokens[c] for c in captions])
        same = torch.from_numpy(images[:, None] == images[None, :])
        loss, parts = model.training_loss(torch.from_numpy(split.image_features(images)), ids, lengths,
                                          same_image=same, step=step,
                                          epoch=step // epoch_steps)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        logs.append(parts)
    return logs


def evaluate_rsum(model, data, split_name: str = "test") -> float:
    split, vocab = load_split(data, split_name), load_vocab(data / "vocab.json")
    tokens = caption_tokens(model, vocab, split.captions)
    feats = split.image_features(np.arange(split.n_images))
    sims = score_matrix(model, feats, tokens, caption_chunk=256)
    return retrieval_metrics(sims, split.caption_image)["rsum"]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run faster on one thread, and far faster on a machine whose cores are shared (OpenMP's
    spinning threads then wait on each other); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Planted synthetic precomp data: 300 train / 100 test images, 12 regions of 64 features."""
    root = tmp_path_factory.mktemp("planted")
    return write_synthetic(root, n_images={"train": 300, "dev": 20, "test": 100}, n_regions=12,
                           feature_dim=PLANTED_DIM, noise=0.5)


# -- pooling -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mean", "max", "topk", "gpo"])
def test_pooling_reads_only_valid_rows(kind):
    torch.manual_seed(0)
    pool = Pool(kind, k=3)
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([6, 1, 2, 4])
    garbage = x.clone()
    garbage[torch.arange(6)[None] >= lengths[:, None]] = 1e3
    np.testing.assert_allclose(pool(garbage, lengths).detach(), pool(x, lengths).detach(), atol=1e-6)
    for b, n in enumerate(lengths.tolist()):
        alone = pool(x[b:b + 1, :n], lengths[b:b + 1]).detach()
        np.testing.assert_allclose(alone[0], pool(x, lengths).detach()[b], atol=1e-6)


def test_pooling_values_equal_naive_definitions():
    x = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 1, 3])
    for b, n in enumerate(lengths.tolist()):
        rows = x[b, :n]
        np.testing.assert_allclose(mean_pool(x, lengths)[b], rows.mean(0), atol=1e-6)
        np.testing.assert_allclose(topk_max_pool(x, lengths, 1)[b], rows.max(0).values, atol=1e-6)
        k = min(2, n)
        np.testing.assert_allclose(topk_max_pool(x, lengths, 2)[b], rows.sort(0, descending=True).values[:k].mean(0),
                                   atol=1e-6)


def test_gpo_weights_depend_on_length_only_and_sum_to_one():
    torch.manual_seed(0)
    gpo = GPO()
    w = gpo.weights(torch.tensor([4, 2, 4]), 4).detach()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(w[0], w[2], atol=1e-7)
    assert (w[1, 2:] == 0).all()
    x = torch.randn(1, 4, 3)
    expected = (x[0].sort(0, descending=True).values * w[0][:, None]).sum(0)
    np.testing.assert_allclose(gpo(x, torch.tensor([4])).detach()[0], expected, atol=1e-6)


def test_gpo_weight_table_equals_the_bigru_and_follows_the_parameters():
    """Without autograd the weights come from a per-length table: equal to running the Bi-GRU, rebuilt after an
    optimiser step changes the parameters and when a longer item arrives."""
    torch.manual_seed(0)
    gpo = GPO()
    lengths = torch.tensor([3, 1, 7, 3])
    with torch.no_grad():
        tabled = gpo.weights(lengths, 7)
        computed = []
        gpo._weights = lambda *args: computed.append(args) or GPO._weights(gpo, *args)
        np.testing.assert_array_equal(gpo.weights(torch.tensor([7, 1]), 5), tabled[[2, 1], :5])  # from the table
        assert not computed
        del gpo._weights
    np.testing.assert_allclose(tabled, gpo.weights(lengths, 7).detach(), atol=1e-6)
    optimizer = torch.optim.SGD(gpo.parameters(), lr=1.0)
    gpo.weights(lengths, 7).square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = gpo.weights(torch.tensor([7, 3]), 7)  # no longer than before: only the step can rebuild
    assert not np.allclose(after[1, :7], tabled[0], atol=1e-4)  # the step moved length 3's weights ...
    np.testing.assert_allclose(after, gpo.weights(torch.tensor([7, 3]), 7).detach(), atol=1e-6)  # ... and the table


def test_gpo_weight_table_grows_safely_on_several_threads():
    """The service searches on several threads with one model. While threads lengthen the table, every thread
    reads whole, correct rows (growing it in place once failed with 'dictionary changed size during iteration'
    or an out-of-range row)."""
    torch.manual_seed(0)
    gpo = GPO()
    with torch.no_grad():
        expected = torch.stack([torch.nn.functional.pad(gpo._weights(torch.tensor([n]), n)[0], (0, 40 - n))
                                for n in range(1, 41)])
    failures: list[BaseException] = []

    def search(seed: int, start: threading.Barrier) -> None:
        rng = np.random.default_rng(seed)
        start.wait()
        try:
            with torch.no_grad():
                for longest in range(2, 41):
                    lengths = torch.from_numpy(rng.integers(1, longest + 1, 3))
                    np.testing.assert_allclose(gpo.weights(lengths, int(lengths.max())),
                                               expected[lengths - 1, :int(lengths.max())], atol=1e-6)
        except BaseException as exc:  # noqa: BLE001 -- reported by the main thread
            failures.append(exc)

    for _ in range(5):
        torch.manual_seed(0)
        gpo = GPO()  # the same weights, and a fresh, empty table each round
        start = threading.Barrier(4)
        threads = [threading.Thread(target=search, args=(seed, start)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures[0]


def test_gpo_weight_table_with_inference_mode_parameters():
    """Parameters made under ``torch.inference_mode`` have no version counter: the weights are computed, not kept."""
    torch.manual_seed(0)
    with torch.inference_mode():
        gpo = GPO()
        lengths = torch.tensor([3, 5])
        np.testing.assert_allclose(gpo.weights(lengths, 5), gpo._weights(lengths, 5), atol=1e-6)


# -- encoders and the Matcher interface ---------------------------------------------------------------------

def test_region_encoder_batchnorm_sees_valid_regions_only():
    torch.manual_seed(0)
    enc = RegionMLPEncoder(10, 8).train()
    feats = torch.randn(3, 5, 10)
    n = torch.tensor([5, 2, 3])
    out = enc(feats, n)
    assert (out[1, 2:] == 0).all() and (out[2, 3:] == 0).all()
    flat = torch.cat([feats[b, :k] for b, k in enumerate(n.tolist())])
    expected = torch.cat([enc.fc(flat) + enc.mlp(flat)])
    got = torch.cat([out[b, :k] for b, k in enumerate(n.tolist())])
    np.testing.assert_allclose(got.detach(), expected.detach(), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "max", "topk", "gpo"])
def test_forward_shapes_gradients_and_no_nan(pooling):
    model = tiny("vse", pooling=pooling).train()
    feats, tokens, lengths = random_batch()
    loss, logs = model.training_loss(feats, tokens, lengths, epoch=0)
    loss.backward()
    assert torch.isfinite(loss) and logs["loss"] > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.eval()
    with torch.no_grad():
        scores = model(feats, tokens, lengths)
    assert scores.shape == (6, 6) and torch.isfinite(scores).all()
    assert scores.abs().max() <= 1 + 1e-5  # cosine similarities


def test_embeddings_do_not_depend_on_the_rest_of_the_batch():
    model = tiny("vse").eval()
    feats, tokens, lengths = random_batch()
    with torch.no_grad():
        images = model.encode_images(feats).emb
        texts = model.encode_texts(tokens, lengths).emb
        for i in range(len(feats)):
            alone_image = model.encode_images(feats[i:i + 1]).emb[0]
            alone_text = model.encode_texts(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1]).emb[0]
            np.testing.assert_allclose(alone_image, images[i], atol=1e-5)
            np.testing.assert_allclose(alone_text, texts[i], atol=1e-5)


def test_region_padding_is_ignored():
    model = tiny("vse").eval()
    feats, _, _ = random_batch()
    padded = torch.cat([feats[:1, :4], torch.full((1, 3, 20), 7.0)], 1)
    with torch.no_grad():
        short = model.encode_images(feats[:1, :4]).emb
        masked = model.encode_images(padded, torch.tensor([4])).emb
    np.testing.assert_allclose(masked, short, atol=1e-5)


def test_engine_scores_equal_one_matrix_product():
    model = tiny("vse").eval()
    feats, tokens, lengths = random_batch()
    token_lists = [tokens[i, : lengths[i]].tolist() for i in range(len(tokens))]
    got = score_matrix(model, feats.numpy(), token_lists, caption_chunk=4)
    with torch.no_grad():
        expected = (model.encode_images(feats).emb @ model.encode_texts(tokens, lengths).emb.T).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert model.pair_bytes_per_word() == 0


def test_save_load_gives_identical_scores(tmp_path):
    model = tiny("vse", seed=3).eval()
    feats, tokens, lengths = random_batch()
    save_model(tmp_path / "vse.safetensors", model)
    loaded = load_model(tmp_path / "vse.safetensors")
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(feats, tokens, lengths), model(feats, tokens, lengths))
    assert loaded.config == model.config


def test_bad_config_and_features_are_clear_errors():
    from itmatch.errors import ItmatchError

    with pytest.raises(ItmatchError, match="pooling"):
        tiny("vse", pooling="median")
    with pytest.raises(ItmatchError, match="text_encoder"):
        tiny("vse", text_encoder="lstm")
    with pytest.raises(ItmatchError, match=r"\(N, regions, 20\)"):
        tiny("vse").encode_images(torch.rand(2, 3, 7))


# -- losses ----------------------------------------------------------------------------------------------

def test_hinge_sums_all_negatives_during_warm_up_epochs():
    model = tiny("vse", hinge_sum_epochs=1)
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    t = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    options = dict(margin=0.2, hardest_negative=True, same_image=None)
    first = model.ranking_loss(v, t, epoch=0, **options)
    later = model.ranking_loss(v, t, epoch=1, **options)
    scores = v @ t.T
    d = scores.diagonal()
    off = ~torch.eye(5, dtype=torch.bool)
    all_costs = ((0.2 + scores - d[:, None]).clamp_min(0)[off].sum() + (0.2 + scores - d[None]).clamp_min(0)[off].sum())
    assert float(first) == pytest.approx(float(all_costs), rel=1e-5)
    assert float(later) < float(first)


def test_triplet_never_draws_a_negative_beyond_the_cutoff():
    # score -0.5 is at distance sqrt(2 + 1) = 1.73 > 1.7: drawn, it would give a hinge 0.2 - 0.5 + 0.6 = 0.3 per
    # anchor and direction (1.2 in all); beyond the cutoff no anchor has a negative in reach: loss 0
    far = torch.tensor([[-0.6, -0.5], [-0.5, -0.6]])
    assert float(distance_weighted_triplet_loss(far, torch.eye(2, dtype=torch.bool), 0.2, cutoff=1.7, dim=8)) == 0.0
    assert float(distance_weighted_triplet_loss(far, torch.eye(2, dtype=torch.bool), 0.2, cutoff=1.8, dim=8)) == (
        pytest.approx(4 * 0.3, rel=1e-5))
    # caption 1 also shows image 0 (a positive, never a negative); the rest is beyond the cutoff
    scores = torch.tensor([[0.9, 0.8, -0.9], [0.1, 0.9, -0.9], [-0.9, -0.9, 0.9]])
    positives = torch.eye(3, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    assert float(distance_weighted_triplet_loss(scores, positives, 0.2, cutoff=1.7, dim=512)) == 0.0
    close = torch.tensor([[0.5, 0.45], [0.45, 0.5]])
    loss = distance_weighted_triplet_loss(close, torch.eye(2, dtype=torch.bool), 0.2, cutoff=1.7, dim=512)
    assert float(loss) == pytest.approx(4 * (0.2 + 0.45 - 0.5), rel=1e-5)


def test_triplet_draws_negatives_in_proportion_to_the_inverse_distance_density():
    # 4,000 anchors, each with its positive (0.2) and two negatives in reach: 0.3 (hinge 0.3) and -0.2 (hinge 0);
    # the loss counts the draws of the first. The transposed direction has no negatives (column 0 is all positive).
    torch.manual_seed(0)
    n, dim = 4000, 8
    scores = torch.tensor([0.2, 0.3, -0.2]).repeat(n, 1)
    positives = torch.zeros(n, 3, dtype=torch.bool)
    positives[:, 0] = True
    draws_of_first = float(distance_weighted_triplet_loss(scores, positives, 0.2, cutoff=1.7, dim=dim)) / 0.3

    def inverse_density(score: float) -> float:  # 1 / q(d), q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2) on the n-sphere
        d = math.sqrt(2 - 2 * score)
        return d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2)

    expected = inverse_density(0.3) / (inverse_density(0.3) + inverse_density(-0.2))   # 0.60; uniform: 0.5
    assert abs(draws_of_first / n - expected) < 0.03, (draws_of_first / n, expected)


# -- learning ---------------------------------------------------------------------------------------------

def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    model = tiny("vse", region_drop=0.0, token_augment=0.0).train()
    feats, tokens, lengths = random_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, logs = model.training_loss(feats, tokens, lengths, epoch=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss"])
    assert losses[-1] < 0.5 * losses[0]


def test_vse_learns_on_planted_data(planted):
    vocab = load_vocab(planted / "vocab.json")
    model = tiny("vse", vocab_size=len(vocab), img_dim=PLANTED_DIM)
    before = evaluate_rsum(model, planted)
    logs = train_steps(model, planted, 150, lr=5e-3)
    after = evaluate_rsum(model, planted)
    hardest = [x["loss"] for x in logs[50:]]   # the summed-hinge warm-up epoch ends at step 50
    assert np.mean(hardest[-10:]) < np.mean(hardest[:10])
    assert after > before + 200, (before, after)


# -- itmatch encode ---------------------------------------------------------------------------------------------

def test_encode_writes_embeddings_that_reproduce_the_scores(tmp_path, capsys):
    from itmatch.cli.encode import encode

    data = write_synthetic(tmp_path / "data", n_images={"train": 3, "test": 7}, feature_dim=20)
    vocab = load_vocab(data / "vocab.json")
    model = tiny("hrem", vocab_size=len(vocab)).eval()
    save_model(tmp_path / "hrem.safetensors", model, vocab=vocab.to_json())
    encode(checkpoint=tmp_path / "hrem.safetensors", data=data, out=tmp_path / "emb", split="test", vocab=None,
           device="cpu", batch_size=3, trust_checkpoint=False, progress=False)
    assert "7 images, 35 captions, 32-d (hrem)" in capsys.readouterr().out
    images, captions = (np.load(tmp_path / "emb" / f"{name}.npy", mmap_mode="r") for name in ("images", "captions"))
    assert isinstance(images, np.memmap) and images.shape == (7, 32) and captions.shape == (35, 32)
    split = load_split(data, "test")
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "caption_image.npy"), split.caption_image)
    expected = score_matrix(model, split.image_features(np.arange(7)), vocab.encode_all(split.captions))
    np.testing.assert_allclose(images @ captions.T, expected, atol=1e-5)
    assert not list((tmp_path / "emb").glob(".*.tmp"))


def test_encode_refuses_a_cross_attention_model(tmp_path):
    from conftest import small_model

    from itmatch.embeddings import encode_split
    from itmatch.errors import ItmatchError

    data = write_synthetic(tmp_path / "data", n_images={"train": 3, "test": 2}, feature_dim=24)
    vocab = load_vocab(data / "vocab.json")
    save_model(tmp_path / "sgr.safetensors", small_model("sgr", vocab_size=len(vocab)), vocab=vocab.to_json())
    with pytest.raises(ItmatchError, match="embedding model"):
        encode_split(tmp_path / "sgr.safetensors", data, "test", tmp_path / "emb")
    assert not (tmp_path / "emb" / "embeddings.json").exists()
