"""HREM: fragment level (batch independence, padding), the instance-level association graph on a hand-built batch,
masked attention, the losses' switches, and learning on planted data (neighbour batches: test_train_neighbours)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_hrem import release_graph
from test_vse import (PLANTED_DIM, evaluate_rsum, planted, random_batch, single_thread,  # noqa: F401 (fixtures)
                      tiny, train_steps)

from itmatch.checkpoint import load_model, save_model
from itmatch.data.vocab import load_vocab
from itmatch.errors import ItmatchError
from itmatch.models.hrem import (AssociationGraph, HREMConfig, InstanceInteraction, Relations, attention_bias,
                                 match_statistics)
from itmatch.models.vse import TrainBatch


def hand_batch() -> TrainBatch:
    """Two images and two captions in 2-d, with garbage in the padding (which must be ignored).

    image 0: regions a=(1,0), b=(0,1); image 1: region c=(1,0) + padding
    caption 0: word x=(1,0) + padding;  caption 1: words y=(0,1), z=(-1,0)
    embeddings v0=(1,0), v1=(.6,.8); t0=(.8,.6), t1=(0,1)
    """
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [5.0, -3.0]]])
    words = torch.tensor([[[1.0, 0.0], [-4.0, 2.0]], [[0.0, 1.0], [-1.0, 0.0]]])
    return TrainBatch(images=torch.tensor([[1.0, 0.0], [0.6, 0.8]]), texts=torch.tensor([[0.8, 0.6], [0.0, 1.0]]),
                      regions=regions, n_regions=torch.tensor([2, 1]), words=words, lengths=torch.tensor([1, 2]))


def test_match_statistics_on_a_hand_built_batch():
    # word-region scores s = LeakyReLU_0.1(w.r): cap0-img0 [[1, 0]], cap0-img1 [[1]],
    # cap1-img0 [[0, 1], [-.1, 0]], cap1-img1 [[0], [-.1]]  (rows words, columns regions)
    b = hand_batch()
    stats = match_statistics(b.regions, b.n_regions, b.words, b.lengths, k=2)
    # caption -> image: normalise each region's column over the words, best region per word
    #   cap1-img0: columns (0,-.1)->(0,-1), (1,0)->(1,0): y best 1, z best 0 -> mean .5, top [1, 0]
    #   cap1-img1: column (0,-.1)->(0,-1): y best 0, z best -1 -> mean -.5, top [0, -1]
    np.testing.assert_allclose(stats.t2i_mean, [[1.0, 1.0], [0.5, -0.5]], atol=1e-6)
    np.testing.assert_allclose(stats.t2i_topk, [[[1, 0], [1, 0]], [[1, 0], [0, -1]]], atol=1e-6)
    # image -> caption: normalise each word's row over the regions, best word per region
    #   img0-cap1: rows (0,1), (-.1,0)->(-1,0): a best 0, b best 1 -> mean .5, top [1, 0]
    #   img1-cap1: rows (0), (-.1)->(-1): c best 0 -> mean 0, top [0, 0 (missing)]
    np.testing.assert_allclose(stats.i2t_mean, [[0.5, 0.5], [1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(stats.i2t_topk, [[[1, 0], [1, 0]], [[1, 0], [0, 0]]], atol=1e-6)


def hand_graph(same_modality_rank: str = "cross") -> AssociationGraph:
    """K=2, half of each row connected; both MLPs computed as relu(x1) + 2 relu(x2) + 0.5."""
    graph = AssociationGraph(topk=2, connect_fraction=0.5, sigma=1.0, same_modality_rank=same_modality_rank)
    for mlp in (graph.mlp_t2i, graph.mlp_i2t):
        with torch.no_grad():
            mlp[0].weight.copy_(torch.eye(2))
            mlp[0].bias.zero_()
            mlp[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
            mlp[2].bias.fill_(0.5)
    return graph


# Connection on the hand batch: one of two columns kept per block row (ties kept); across modalities by the
# mean matches. Same-modality blocks: "within" by v·vᵀ = t·tᵀ = [[1, .6], [.6, 1]] (the diagonal); "cross"
# (the release) images by v·tᵀ = [[.8, 0], [.96, .8]] (column 0 twice), captions by t·vᵀ = [[.8, .96], [0, .8]].
HAND_CONNECT = {
    "within": [[True, False, True, True],
               [False, True, True, False],
               [True, True, True, False],
               [True, False, False, True]],
    "cross": [[True, False, True, True],
              [True, False, True, False],
              [True, True, False, True],
              [True, False, False, True]],
}


@pytest.mark.parametrize("rank", ["cross", "within"])
def test_connection_and_relevance_matrices_on_a_hand_built_batch(rank):
    relations = hand_graph(rank)(hand_batch())
    e = math.exp(-math.sqrt(0.8))  # exp(-||v0 - v1||) = exp(-||t0 - t1||)
    # rows and columns: img0, img1, cap0, cap1. i2t = mlp(i2t_topk) + i2t_mean, t2i likewise.
    expected_relevance = [[1.0, e, 2.0, 2.0],
                          [e, 1.0, 2.5, 0.5],
                          [2.5, 2.5, 1.0, e],
                          [2.0, 0.0, e, 1.0]]
    np.testing.assert_allclose(relations.relevance.detach(), expected_relevance, atol=1e-6)
    np.testing.assert_array_equal(relations.connect, HAND_CONNECT[rank])
    # L_reg = KL(softmax(S_i2t) || softmax(G)) per row, averaged, plus the same for t2i, G = exp(-||v - t||)
    v, t = hand_batch().images, hand_batch().texts
    guide = torch.exp(-torch.cdist(v, t)).tolist()

    def kl(p_logits, q_logits):
        p = [math.exp(x) / sum(math.exp(y) for y in p_logits) for x in p_logits]
        q = [math.exp(x) / sum(math.exp(y) for y in q_logits) for x in q_logits]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    i2t, t2i = [[2.0, 2.0], [2.5, 0.5]], [[2.5, 2.5], [2.0, 0.0]]
    guide_t = [list(col) for col in zip(*guide)]
    want = sum(kl(i2t[r], guide[r]) for r in range(2)) / 2 + sum(kl(t2i[r], guide_t[r]) for r in range(2)) / 2
    assert float(relations.reg_loss.detach()) == pytest.approx(want, rel=1e-5)


def test_masked_entries_get_no_attention():
    relations = hand_graph()(hand_batch())
    layer = InstanceInteraction("fusion", 2, 1, 0.0, weight=1.5).fusion.eval()
    with torch.no_grad():  # zero query/key projections: logits are exactly 1.5 * S where connected
        layer.self_attn.in_proj_weight.zero_()
        layer.self_attn.in_proj_bias.zero_()
    nodes = torch.randn(1, 4, 2)
    _, weights = layer.self_attn(nodes, nodes, nodes, attn_mask=attention_bias(relations, 1.5), need_weights=True)
    logits = (1.5 * relations.relevance).masked_fill(~relations.connect, float("-inf"))
    np.testing.assert_allclose(weights[0].detach(), torch.softmax(logits, 1).detach(), atol=1e-6)
    assert (weights[0][~relations.connect] == 0).all()


def test_unconnected_nodes_do_not_change_a_node_and_connected_ones_do():
    torch.manual_seed(0)
    relations = Relations(connect=torch.tensor([[True, False, True, False], [False, True, False, True],
                                                [True, True, True, False], [False, True, False, True]]),
                          relevance=torch.rand(4, 4), reg_loss=torch.tensor(0.0))
    for kind in ("fusion", "standalone"):
        module = InstanceInteraction(kind, 8, 2, 0.0, weight=1.0).eval()
        nodes = torch.randn(4, 8)
        out = module(nodes, relations)
        moved = nodes.clone()
        moved[1] += 3.0     # node 0 (an image) is not connected to node 1
        np.testing.assert_allclose(module(moved, relations)[0].detach(), out[0].detach(), atol=1e-6)
        moved = nodes.clone()
        moved[2] += 3.0     # ... but is connected to node 2 (a caption)
        assert (module(moved, relations)[0] - out[0]).abs().max() > 1e-3


def test_standalone_attends_across_then_within_modalities():
    relations = hand_graph()(hand_batch())
    half = torch.arange(4) >= 2
    same = half[:, None] == half[None, :]
    inter = attention_bias(relations, 1.0, ~same)
    intra = attention_bias(relations, 1.0, same)
    assert torch.isinf(inter[same]).all() and torch.isinf(intra[~same]).all()
    assert torch.isfinite(inter).any(1).all() and torch.isfinite(intra).any(1).all()  # no row left empty


@pytest.mark.parametrize("rank", ["cross", "within"])
def test_graph_equals_the_release_transcription(rank):
    """Connection, relevance and L_reg equal tests/reference_hrem.py (the release's graph function with the
    same-modality lines of the matching commit) on a batch of full images and captions of >= K words."""
    gen = torch.Generator().manual_seed(3)
    n, k = 12, 4
    images, texts = F.normalize(torch.randn(n, 8, generator=gen), dim=1), F.normalize(torch.randn(n, 8,
                                                                                               generator=gen), dim=1)
    lengths = torch.randint(k, 10, (n,), generator=gen)
    batch = TrainBatch(images=images, texts=texts, regions=torch.randn(n, 7, 8, generator=gen),
                       n_regions=torch.full((n,), 7), words=torch.randn(n, 9, 8, generator=gen), lengths=lengths)
    graph = AssociationGraph(topk=k, connect_fraction=0.5, sigma=1.0, same_modality_rank=rank)
    relations = graph(batch)
    connect, relation, reg = release_graph(images, texts, batch.regions, batch.words, lengths, graph.mlp_t2i,
                                           graph.mlp_i2t, threshold=0.5, topk=k, same_modality=rank)
    np.testing.assert_array_equal(relations.connect, connect)
    np.testing.assert_allclose(relations.relevance.detach(), relation.detach(), atol=1e-5)
    assert float(relations.reg_loss.detach()) == pytest.approx(float(reg.detach()), rel=1e-5)
    other = release_graph(images, texts, batch.regions, batch.words, lengths, graph.mlp_t2i, graph.mlp_i2t,
                          topk=k, same_modality="within" if rank == "cross" else "cross")[0]
    assert not torch.equal(connect, other)  # the two rules really differ on this batch


def test_hrem_defaults_to_the_released_connection_rule():
    assert HREMConfig().same_modality_rank == "cross"
    with pytest.raises(ItmatchError, match="same_modality_rank must be one of cross, within"):
        HREMConfig(same_modality_rank="cosine")


def test_match_statistics_chunks_equal_one_pass():
    torch.manual_seed(0)
    regions, words = torch.randn(5, 7, 6), torch.randn(5, 9, 6)
    n, lengths = torch.tensor([7, 3, 5, 1, 7]), torch.tensor([9, 2, 4, 9, 1])
    whole = match_statistics(regions, n, words, lengths, k=4)
    chunked = match_statistics(regions, n, words, lengths, k=4, max_elements=1)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_inference_embeddings_are_independent_of_the_batch_but_training_ones_are_not():
    model = tiny("hrem", instance_warmup=0, relation_dropout=0.0, instance_dropout=0.0,
                 region_drop=0.0, token_augment=0.0)
    feats, tokens, lengths = random_batch()
    other_feats, other_tokens, _ = random_batch(seed=7)
    mixed_feats = torch.cat([feats[:1], other_feats[1:]])
    mixed_tokens = torch.cat([tokens[:1], other_tokens[1:]])
    model.eval()
    with torch.no_grad():
        a = model.encode_images(feats).emb[0], model.encode_texts(tokens, lengths).emb[0]
        b = model.encode_images(mixed_feats).emb[0], model.encode_texts(mixed_tokens, lengths).emb[0]
        alone = model.encode_images(feats[:1]).emb[0], model.encode_texts(tokens[:1], lengths[:1]).emb[0]
    for x, y, z in zip(a, b, alone):
        np.testing.assert_allclose(x, y, atol=1e-5)
        np.testing.assert_allclose(x, z, atol=1e-5)
    model.train()
    with torch.no_grad():
        v1, t1, _ = model.enhance(model.encode_train_batch(feats, tokens, lengths))
        v2, t2, _ = model.enhance(model.encode_train_batch(mixed_feats, mixed_tokens, lengths))
    assert (v1[0] - v2[0]).abs().max() > 1e-3 and (t1[0] - t2[0]).abs().max() > 1e-3


def test_caption_and_image_padding_do_not_change_embeddings():
    model = tiny("hrem").eval()
    feats, tokens, lengths = random_batch()
    with torch.no_grad():
        batch_text = model.encode_texts(tokens, lengths).emb
        batch_image = model.encode_images(torch.cat([feats[:, :4], torch.rand(6, 3, 20) * 9], 1),
                                          torch.full((6,), 4)).emb
        for i in range(len(tokens)):
            alone = model.encode_texts(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1]).emb[0]
            assert float((alone - batch_text[i]).abs().max()) <= 1e-5
            image = model.encode_images(feats[i:i + 1, :4]).emb[0]
            assert float((image - batch_image[i]).abs().max()) <= 1e-5


@pytest.mark.parametrize("interaction", ["fusion", "standalone"])
def test_every_parameter_gets_a_gradient_once_the_instance_level_is_on(interaction):
    model = tiny("hrem", interaction=interaction, instance_warmup=5).train()
    feats, tokens, lengths = random_batch()
    loss, logs = model.training_loss(feats, tokens, lengths, step=4)
    assert set(logs) == {"base", "loss"}  # still warming up
    loss.backward()
    idle = {n for n, p in model.named_parameters() if p.grad is None}
    assert idle and all(n.startswith(("graph.", "interaction.")) for n in idle)
    model.zero_grad(set_to_none=True)
    loss, logs = model.training_loss(feats, tokens, lengths, step=5)
    assert set(logs) == {"base", "enhanced", "consistency", "reg", "loss"}
    assert logs["loss"] == pytest.approx(logs["base"] + logs["enhanced"] + logs["consistency"] + 10 * logs["reg"],
                                         rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("interaction", ["fusion", "standalone"])
def test_the_training_gradient_is_that_of_the_papers_four_terms(interaction):
    """``training_loss``'s gradient equals autograd's of L(v, t) + L(ṽ, t̃) + L(v, t̃) + L(ṽ, t) + 10 L_reg assembled
    here from the graph and the interaction module (no randomness: no dropout, no augmentation, hinge loss): the
    enhanced and consistency terms train the encoders through ṽ and t̃."""
    model = tiny("hrem", interaction=interaction, instance_warmup=5, relation_dropout=0.0, instance_dropout=0.0,
                 region_drop=0.0, token_augment=0.0, loss="hinge").train()
    feats, tokens, lengths = random_batch()
    model.training_loss(feats, tokens, lengths, step=5)[0].backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    def rank(images, texts):
        return model.ranking_loss(images, texts, margin=0.2, hardest_negative=True, same_image=None, epoch=0)

    batch = model.encode_train_batch(feats, tokens, lengths)
    relations = model.graph(batch)
    nodes = model.interaction(torch.cat([batch.images, batch.texts], 0), relations)
    v, t, v2, t2 = batch.images, batch.texts, nodes[:6], nodes[6:]
    base = rank(v, t)
    (base + rank(v2, t2) + rank(v, t2) + rank(v2, t) + 10.0 * relations.reg_loss).backward(retain_graph=True)
    for name, param in model.named_parameters():
        torch.testing.assert_close(got[name], param.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    model.zero_grad(set_to_none=True)
    base.backward()  # the instance terms matter: without them the encoder's gradient is another
    assert float((model.img_enc.fc.weight.grad - got["img_enc.fc.weight"]).abs().max()) > 1e-3


def test_consistency_term_is_optional_and_interaction_can_be_off():
    feats, tokens, lengths = random_batch()
    model = tiny("hrem", instance_warmup=0, consistency_loss=False).train()
    assert "consistency" not in model.training_loss(feats, tokens, lengths)[1]
    off = tiny("hrem", interaction="off").train()
    assert set(off.training_loss(feats, tokens, lengths, step=10**6)[1]) == {"base", "loss"}
    assert not any(n.startswith(("graph.", "interaction.")) for n, _ in off.named_parameters())
    with pytest.raises(ItmatchError, match="interaction"):
        tiny("hrem", interaction="both")


def test_save_load_gives_identical_scores(tmp_path):
    model = tiny("hrem", seed=4, interaction="standalone").eval()
    feats, tokens, lengths = random_batch()
    save_model(tmp_path / "hrem.safetensors", model)
    loaded = load_model(tmp_path / "hrem.safetensors")
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(feats, tokens, lengths), model(feats, tokens, lengths))


def test_hrem_learns_on_planted_data(planted):
    vocab = load_vocab(planted / "vocab.json")
    model = tiny("hrem", vocab_size=len(vocab), img_dim=PLANTED_DIM, instance_warmup=80)
    before = evaluate_rsum(model, planted)
    logs = train_steps(model, planted, 160, lr=5e-3)
    after = evaluate_rsum(model, planted)
    assert "enhanced" not in logs[79] and "enhanced" in logs[80]
    assert np.mean([x["enhanced"] for x in logs[-10:]]) < logs[80]["enhanced"]
    assert after > before + 120, (before, after)


@pytest.mark.parametrize("recipe", ["hrem_bert_f30k", "hrem_bert_coco", "hrem_bigru_f30k", "hrem_bigru_coco",
                                    "vse_bert_f30k", "vse_bert_coco", "vse_bigru_f30k", "vse_bigru_coco"])
def test_recipes_load_and_build_their_models(recipe):
    from pathlib import Path

    from itmatch.models import create_model
    from itmatch.train.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / f"{recipe}.toml")
    args = dict(config.model.args)
    if args.get("text_encoder") == "bert":
        assert args.pop("text_encoder_path") == "bert-base-uncased"   # the authors' encoder, a local copy
    model = create_model(config.model.name, **args)
    assert model.config.embed_size == 1024 and config.data.dev_subset
    if config.model.name == "hrem":
        coco = recipe.endswith("coco")
        assert model.config.relevance_weight == (1.5 if coco else 1.0)
        assert model.config.triplet_cutoff == (1.9 if coco else 1.7)
        assert config.data.batch_size == (256 if coco else 128) and config.schedule.lr_decay_epochs == [15, 25]
        assert config.data.neighbour_clusters == 1000  # the paper's neighbour batch sampling
        assert model.config.same_modality_rank == "cross"  # the release's connection rule
    if "bigru" in recipe and config.model.name == "hrem":  # every value says where it comes from
        text = (Path(__file__).parents[1] / "configs" / f"{recipe}.toml").read_text()
        for line in text.splitlines():
            if line.split("=")[0].strip() in {*args, "lr", "weight_decay", "grad_clip", "epochs", "lr_decay_epochs",
                                              "lr_decay", "batch_size", "neighbour_clusters", "margin"}:
                assert any(tag in line for tag in ("[release]", "[VSE-inf]", "[itmatch]")), line


def test_hrem_and_sgr_ensemble_through_itmatch_evaluate(tmp_path, capsys):
    from conftest import SMALL, small_model

    from itmatch.cli import main
    from itmatch.data.precomp import load_split
    from itmatch.data.synthetic import write_synthetic
    from itmatch.scoring import score_matrix

    data = write_synthetic(tmp_path / "data", n_images={"train": 3, "test": 9}, feature_dim=SMALL["img_dim"])
    vocab = load_vocab(data / "vocab.json")
    hrem = tiny("hrem", vocab_size=len(vocab), img_dim=SMALL["img_dim"]).eval()
    sgr = small_model("sgr", vocab_size=len(vocab))
    for name, model in (("hrem", hrem), ("sgr", sgr)):
        save_model(tmp_path / f"{name}.safetensors", model, vocab=vocab.to_json())
    code = main(["evaluate", "--data", str(data), "--checkpoint", str(tmp_path / "hrem.safetensors"),
                 "--checkpoint", str(tmp_path / "sgr.safetensors"), "--save-sims", str(tmp_path / "sims.npy"),
                 "--no-progress"])
    assert code == 0 and "rsum" in capsys.readouterr().out
    split = load_split(data, "test")
    feats, tokens = split.image_features(np.arange(split.n_images)), vocab.encode_all(split.captions)
    expected = (score_matrix(hrem, feats, tokens) + score_matrix(sgr, feats, tokens)) / 2
    np.testing.assert_allclose(np.load(tmp_path / "sims.npy"), expected, atol=1e-6)
