"""The batched scoring engine equals the literal caption-by-caption reference of the authors' algorithm."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from conftest import sharpen as sharpen_to, small_model
from reference_sgraf import reference_scores

from itmatch.models import Ensemble, attention, layers
from itmatch.models.ensemble import member_mean
from itmatch.models.sgraf import GraphReasoning
from itmatch.scoring import _tile_map, encode_images, encode_texts, score_encoded, score_matrix

# Lengths 1..40 with many repeats and single-word captions, in an order the engine must sort.
LENGTHS = [1, 40, 5, 5, 5, 5, 2, 17, 1, 9, 9, 9, 3, 33, 12, 12, 1, 26, 7, 7, 7, 7, 7, 4, 21, 2, 38, 11]


def sharpen(model: torch.nn.Module, feats: torch.Tensor, captions: list[list[int]]) -> torch.nn.Module:
    """``conftest.sharpen`` with this file's reference scores."""
    return sharpen_to(model, reference_scores(model, feats, captions))


def make_inputs(n_images: int, lengths: list[int], seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(n_images, 36, 24, generator=gen)
    captions = [torch.randint(4, 50, (n,), generator=gen).tolist() for n in lengths]
    return feats, captions


@pytest.mark.parametrize("name", ["sgr", "saf"])
@pytest.mark.parametrize("chunks", [(7, 3), (5, 4), (128, None)])
def test_engine_equals_reference(name, chunks):
    feats, captions = make_inputs(11, LENGTHS)
    model = sharpen(small_model(name, seed=3), feats, captions)
    expected = reference_scores(model, feats, captions).numpy()
    caption_chunk, image_chunk = chunks
    got = score_matrix(model, feats.numpy(), captions, caption_chunk=caption_chunk, image_chunk=image_chunk)
    assert got.shape == (11, len(LENGTHS))
    assert expected.std() > 0.2  # the comparison is not between near-constant matrices
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_memory_budget_tiles_give_the_same_scores():
    feats, captions = make_inputs(9, LENGTHS[:13], seed=5)
    model = sharpen(small_model("sgr", seed=4), feats, captions)
    whole = score_matrix(model, feats.numpy(), captions, max_memory=1 << 30)
    tiny = score_matrix(model, feats.numpy(), captions, max_memory=1)  # one image per tile
    np.testing.assert_allclose(tiny, whole, rtol=0, atol=1e-6)


def test_ensemble_averages_members():
    feats, captions = make_inputs(6, LENGTHS[:10], seed=8)
    sgr, saf = (sharpen(small_model(n, seed=s), feats, captions) for n, s in (("sgr", 6), ("saf", 7)))
    expected = (reference_scores(sgr, feats, captions) + reference_scores(saf, feats, captions)).numpy() / 2
    got = score_matrix(Ensemble([sgr, saf]), feats.numpy(), captions, caption_chunk=4, image_chunk=5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    direct = Ensemble([sgr, saf]).eval()
    with torch.no_grad():
        from itmatch.scoring import pad_tokens
        tokens, lengths = pad_tokens(captions)
        batched = direct(feats, tokens, lengths).numpy()
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-5)


def test_member_mean_is_the_authors_average_and_keeps_read_only_inputs():
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((4, 6), dtype=np.float32) for _ in range(3))
    held = a.copy()
    held.flags.writeable = False  # as a memory-mapped saved matrix is
    two = member_mean([[held, held[:2]], [b, b[:2]]])
    assert [t.dtype for t in two] == [np.float32] * 2
    np.testing.assert_array_equal(two[0], (a + b) / 2)  # the authors' (sims1 + sims2) / 2, bit for bit
    np.testing.assert_array_equal(two[1], ((a + b) / 2)[:2])
    np.testing.assert_array_equal(held, a)
    np.testing.assert_allclose(member_mean(iter([[a.copy()], [b], [c]]))[0], (a + b + c) / 3, rtol=1e-6)
    assert member_mean([[a]], np.float32)[0] is a  # one member summed as it is: its own scores, not a copy
    x, y = (rng.random((4, 6)) for _ in range(2))  # float64, as the authors save score matrices: rounded once
    np.testing.assert_array_equal(member_mean([[x.copy()], [y]])[0], ((x + y) / 2).astype(np.float32))
    np.testing.assert_array_equal(member_mean([[a.copy()], [b]], np.float32)[0], (a + b) / 2)
    with pytest.raises(ValueError, match="at least one member"):
        member_mean([])


def test_caption_score_does_not_depend_on_its_neighbours():
    feats, captions = make_inputs(4, [3, 30, 30, 1, 8], seed=10)
    model = sharpen(small_model("saf", seed=9), feats, captions)
    together = score_matrix(model, feats.numpy(), captions)
    for j, caption in enumerate(captions):
        alone = score_matrix(model, feats.numpy(), [caption])
        np.testing.assert_allclose(alone[:, 0], together[:, j], rtol=0, atol=1e-6)


def test_engine_leaves_training_mode_untouched():
    model = small_model("sgr").train()
    feats, captions = make_inputs(3, [4, 5])
    score_matrix(model, feats.numpy(), captions)
    assert model.training


def test_graph_step_in_chunks_equals_the_autograd_path(monkeypatch):
    """Scoring runs a graph step in chunks of pairs (bias folded into the projection); training in one piece."""
    monkeypatch.setattr(layers, "NODE_CHUNK_ROWS", 32)  # chunks of 56 of these pairs of 9 nodes of 16
    torch.manual_seed(0)
    step = GraphReasoning(16)
    for linear in (step.graph_query_w, step.graph_key_w, step.sim_graph_w):
        torch.nn.init.normal_(linear.bias)
    nodes = torch.randn(300, 9, 16)
    mask = torch.arange(9)[None] < torch.randint(1, 10, (300,))[:, None]
    assert len(layers.pair_chunks(300, 9, 16)) > 4  # several chunks
    with torch.no_grad():
        chunked = step(nodes, mask)
    whole = step(nodes, mask)
    assert whole.requires_grad and (chunked > 0).float().mean() > 0.3
    torch.testing.assert_close(chunked, whole.detach(), rtol=0, atol=1e-6)


def test_reasoning_in_chunks_equals_the_autograd_path(monkeypatch):
    """Scoring takes each chunk of pairs through every SGR step before the next chunk; training takes each step
    over all pairs."""
    monkeypatch.setattr(layers, "NODE_CHUNK_ROWS", 32)
    model = small_model("sgr", seed=2).eval()
    encoder = model.sim_enc
    for module in encoder.SGR_module:
        for linear in (module.graph_query_w, module.sim_graph_w):
            torch.nn.init.normal_(linear.bias)
    dim = encoder.cfg.sim_dim
    torch.manual_seed(0)
    nodes = torch.randn(40, 12, 9, dim)
    mask = torch.arange(9)[None] < torch.randint(1, 10, (12,))[:, None]
    assert len(layers.pair_chunks(40 * 12, 9, dim)) > 4  # several chunks
    with torch.no_grad():
        chunked = encoder._reason(nodes, mask)
    whole = encoder._reason(nodes.requires_grad_(), mask)
    assert whole.requires_grad and chunked.shape == (40, 12, dim) and chunked.std() > 0.1
    torch.testing.assert_close(chunked, whole.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["sgr", "saf", "tshsr"])
def test_region_grams_are_made_once_and_sliced_to_each_tile(monkeypatch, name):
    """``score_encoded`` prepares the images once (``prepared_images``: their Gram matrices): every tile's
    attention over regions gets the Gram matrices of exactly its images, and the scores equal those of the
    per-tile computation."""
    feats, captions = make_inputs(11, LENGTHS)
    model = small_model(name, seed=3)
    grams = []
    normalised_weights = attention.normalised_weights

    def spy(context, queries, smooth, context_lengths=None, eps=1e-8, gram=None):
        if context_lengths is None:  # regions attended by words
            grams.append(gram)
            if gram is not None:
                torch.testing.assert_close(gram, context @ context.transpose(1, 2), rtol=0, atol=1e-6)
        return normalised_weights(context, queries, smooth, context_lengths, eps, gram)

    monkeypatch.setattr(attention, "normalised_weights", spy)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        images, texts = encode_images(model, feats, cpu), encode_texts(model, captions, cpu)
        prepared = score_encoded(model, images, texts, 1 << 20, 3, image_chunk=2)
        tiles = len(grams)
        monkeypatch.setattr(type(model), "prepared_images", lambda self, images: images)
        per_tile = score_encoded(model, images, texts, 1 << 20, 3, image_chunk=2)
    assert tiles > 10 and all(g is not None for g in grams[:tiles])
    assert all(g is None for g in grams[tiles:])  # without preparing, each tile makes its own
    np.testing.assert_allclose(prepared, per_tile, rtol=0, atol=1e-6)


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("name", ["sgr", "saf"])
def test_tiles_side_by_side_give_the_one_thread_scores(two_threads, name):
    """With 2 intra-op threads the tiles run on 2 worker threads of one intra-op thread each: every tile is
    computed as at one thread, so the scores of the same encodings are identical, and the thread count is
    restored."""
    feats, captions = make_inputs(11, LENGTHS)
    model = small_model(name, seed=3).eval()
    cpu = torch.device("cpu")
    with torch.inference_mode():
        images, texts = encode_images(model, feats, cpu), encode_texts(model, captions, cpu)
        side_by_side = score_encoded(model, images, texts, 1 << 20, 3, image_chunk=2)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        one_thread = score_encoded(model, images, texts, 1 << 20, 3, image_chunk=2)
    np.testing.assert_array_equal(side_by_side, one_thread)
    expected = reference_scores(model, feats, captions).numpy()
    np.testing.assert_allclose(side_by_side, expected, rtol=0, atol=1e-5)


def test_tile_workers_keep_the_callers_modes_and_pass_errors_on(two_threads):
    def seen(item):
        if item == 5:
            raise ValueError("tile 5")
        return (torch.is_inference_mode_enabled(), torch.is_grad_enabled(), torch.get_num_threads(),
                threading.current_thread().name.startswith("itmatch-tile"))

    with torch.inference_mode(), _tile_map(torch.device("cpu")) as tile_map:
        assert set(tile_map(seen, range(4))) == {(True, False, 1, True)}
    with torch.no_grad(), _tile_map(torch.device("cpu")) as tile_map:
        assert set(tile_map(seen, range(4))) == {(False, False, 1, True)}
    started = []

    def slow(item):
        started.append(item)
        time.sleep(0.01)
        return seen(item)

    with pytest.raises(ValueError, match="tile 5"), _tile_map(torch.device("cpu")) as tile_map:
        list(tile_map(slow, range(1000)))
    assert len(started) < 100  # the tiles not yet started were cancelled, not run to the end
    assert torch.get_num_threads() == 2
