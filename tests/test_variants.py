"""The papers' ablation switches: each SGRAF variant equals a literal per-caption computation of what the paper
describes, each HREM switch changes only what it names, joint training sums two heads over shared nodes, and
every variant trains with a gradient on every parameter."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import SMALL, randomize_batchnorm
from reference_sgraf import (_l2, attention_filtration, encode_caption, encode_image, graph_step, scan_attention,
                             text_sa, visual_sa)
from test_hrem import hand_batch, hand_graph
from test_vse import random_batch, single_thread, tiny  # noqa: F401 (single_thread: autouse fixture)

from itmatch.data.precomp import load_split
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import load_vocab
from itmatch.errors import ItmatchError
from itmatch.losses import ranking_loss
from itmatch.models import create_model
from itmatch.models.hrem import InstanceInteraction, attention_bias
from itmatch.scoring import pad_tokens, score_matrix
from itmatch.train.config import LossSection
from itmatch.train.objective import TrainingObjective

LENGTHS = [1, 12, 5, 5, 2, 9, 3, 7]

#: name -> (registered model, overrides): the rows of SGRAF Tables 3-5 that are not the published models.
SGRAF_VARIANTS = {
    "no-reasoning": ("sgr", {"sgr_step": 0}),
    "one-step": ("sgr", {"sgr_step": 1}),
    "local-sgr": ("sgr", {"global_node": False, "sgr_step": 2}),
    "local-saf": ("saf", {"global_node": False}),
    "i2t-sgr": ("sgr", {"attention": "i2t", "global_node": False}),
    "i2t-saf": ("saf", {"attention": "i2t"}),
    "ave-vector": ("ave", {"global_node": False}),
    "ave-scalar": ("ave", {"global_node": False, "similarity": "scalar"}),
    "ave-scalar-i2t": ("ave", {"attention": "i2t", "similarity": "scalar"}),
    "ave-global": ("ave", {}),
    "joint": ("sgraf_joint", {}),
}


def make_inputs(n_images: int = 5, lengths: list[int] = LENGTHS, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(n_images, 36, SMALL["img_dim"], generator=gen)
    return feats, [torch.randint(4, SMALL["vocab_size"], (n,), generator=gen).tolist() for n in lengths]


def variant(name: str, seed: int = 0) -> torch.nn.Module:
    """A small random model of ``name`` in eval mode."""
    model_name, overrides = SGRAF_VARIANTS[name]
    torch.manual_seed(seed)
    model = create_model(model_name, **{**SMALL, **overrides})
    randomize_batchnorm(model, seed)
    return model.eval()


def sharpened(name: str, feats: torch.Tensor, captions: list[list[int]]) -> torch.nn.Module:
    """``variant(name)`` with each read-out (``*eval_w``) re-centred and scaled so that its logits on these inputs
    spread over a few units instead of sitting in the flat middle of the sigmoid (as ``conftest.sharpen``)."""
    model = variant(name)
    readouts = [m for key, m in model.named_modules() if key.endswith("eval_w")]
    logits = {m: [] for m in readouts}
    hooks = [m.register_forward_hook(lambda m, args, out: logits[m].append(out.flatten())) for m in readouts]
    with torch.no_grad():
        literal_scores(model, feats, captions)
        for hook in hooks:
            hook.remove()
        for layer, outs in logits.items():
            values = torch.cat(outs).double()
            scale = 3.0 / float(values.std())
            centre = float(values.mean()) - float(layer.bias)
            layer.weight.mul_(scale)
            layer.bias.fill_(-scale * centre)
    return model


def literal_scores(model, feats: torch.Tensor, captions: list[list[int]]) -> torch.Tensor:
    """The paper's variants written out caption by caption with the authors' functions (tests/reference_sgraf):
    nodes = [global] + one per word (T2I: words attend to regions) or per region (I2T: regions attend to words),
    vector ``l2norm(W (x - y)^2)`` or scalar cosine; SGR reads node 0 after its steps, or the mean of the
    local nodes without a global node; SAF filters; AVE averages ``sigmoid(w s)`` (or the cosines)."""
    cfg, sim = model.config, model.sim_enc
    regions = encode_image(model, feats)
    columns = []
    for ids in captions:
        words = encode_caption(model, ids).repeat(len(feats), 1, 1)
        if cfg.attention == "t2i":
            attended, own = scan_attention(words, regions, cfg.lambda_softmax), words
        else:
            attended, own = scan_attention(regions, words, cfg.lambda_softmax), regions
        scalar = cfg.similarity == "scalar"
        if scalar:
            local = torch.nn.functional.cosine_similarity(attended, own, dim=-1, eps=1e-8)
        else:
            local = _l2(sim.sim_tranloc_w((attended - own) ** 2)) if cfg.uses_local else None
        nodes = local
        if cfg.global_node:
            img_glo, cap_glo = visual_sa(sim.v_global_w, regions), text_sa(sim.t_global_w, words[:1])
            glob = (torch.nn.functional.cosine_similarity(img_glo, cap_glo, dim=-1)[:, None] if scalar
                    else _l2(sim.sim_tranglo_w((img_glo - cap_glo) ** 2))[:, None])
            nodes = glob if local is None else torch.cat([glob, local], 1)
        heads = []
        if "SGR" in cfg.heads:
            reasoned = nodes
            for step in sim.SGR_module:
                reasoned = graph_step(step, reasoned)
            vec = reasoned[:, 0] if cfg.global_node else reasoned.mean(1)
            heads.append(torch.sigmoid((sim.sim_eval_w if len(cfg.heads) == 1 else sim.sgr_eval_w)(vec)))
        if "SAF" in cfg.heads:
            vec = attention_filtration(sim.SAF_module, nodes)
            heads.append(torch.sigmoid((sim.sim_eval_w if len(cfg.heads) == 1 else sim.saf_eval_w)(vec)))
        if cfg.module == "AVE":
            heads.append((nodes if scalar else torch.sigmoid(sim.sim_eval_w(nodes))[..., 0]).mean(1, keepdim=True))
        columns.append(sum(heads) / len(heads))
    return torch.cat(columns, 1)


@pytest.mark.parametrize("name", sorted(SGRAF_VARIANTS))
def test_sgraf_variant_equals_its_literal_computation(name):
    feats, captions = make_inputs()
    model = sharpened(name, feats, captions)
    with torch.no_grad():
        expected = literal_scores(model, feats, captions).numpy()
    got = score_matrix(model, feats.numpy(), captions, caption_chunk=3, image_chunk=2)
    assert expected.std() > (0.01 if name.startswith("ave") else 0.05)  # not near-constant matrices
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_switches_build_only_what_they_use():
    params = {name: {k for k, _ in variant(name).named_parameters() if k.startswith("sim_enc.")}
              for name in SGRAF_VARIANTS}
    assert params["no-reasoning"] == {"sim_enc.sim_tranglo_w.weight", "sim_enc.sim_tranglo_w.bias",
                                      "sim_enc.sim_eval_w.weight", "sim_enc.sim_eval_w.bias",
                                      *{k for k in params["ave-global"] if "global_w" in k}}
    assert not any("global_w" in k or "tranglo" in k for k in params["local-sgr"])
    assert not params["ave-scalar"]                          # SCAN's average of cosines has no parameters
    assert {k for k in params["joint"] if "eval_w" in k} == {
        "sim_enc.sgr_eval_w.weight", "sim_enc.sgr_eval_w.bias", "sim_enc.saf_eval_w.weight",
        "sim_enc.saf_eval_w.bias"}
    default = {k for k, _ in create_model("sgr", **SMALL).named_parameters() if k.startswith("sim_enc.")}
    assert params["one-step"] < default                       # fewer graph steps, nothing else changed


def test_no_reasoning_is_the_read_out_of_the_global_alignment():
    model = variant("no-reasoning")
    feats, captions = make_inputs(3, [4, 2])
    tokens, lengths = pad_tokens(captions)
    with torch.no_grad():
        images, texts = model.encode_images(feats), model.encode_texts(tokens, lengths)
        sim = model.sim_enc
        glob = _l2(sim.sim_tranglo_w((images.glob[:, None] - texts.glob[None]) ** 2))
        expected = torch.sigmoid(sim.sim_eval_w(glob))[..., 0]
        np.testing.assert_allclose(model.score(images, texts), expected, rtol=0, atol=1e-6)


def test_joint_scores_average_the_heads_and_the_loss_sums_them():
    model = variant("joint").train()
    feats, captions = make_inputs(4, [6, 3, 9, 2])
    tokens, lengths = pad_tokens(captions)
    images, texts = model.encode_images(feats), model.encode_texts(tokens, lengths)
    torch.manual_seed(0)
    heads = model.head_scores(images, texts)
    assert heads.shape == (2, 4, 4)
    model.eval()
    with torch.no_grad():
        eval_heads = model.head_scores(model.encode_images(feats), model.encode_texts(tokens, lengths))
        np.testing.assert_allclose(model(feats, tokens, lengths), eval_heads.mean(0), rtol=0, atol=1e-7)
    model.train()
    loss_section = LossSection(margin=0.2, hardest_negative=True, mask_same_image=False)
    objective = TrainingObjective(model, loss_section)
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    _, logs = objective(feats, tokens, lengths, torch.arange(4), step=0, epoch=0)
    model.load_state_dict(state)  # SAF's running statistics advanced: the second pass starts from the same ones
    torch.manual_seed(0)
    heads = model.head_scores(model.encode_images(feats), model.encode_texts(tokens, lengths))
    expected = ranking_loss(heads[0]) + ranking_loss(heads[1])
    assert logs["loss"] == pytest.approx(float(expected.detach()), rel=1e-6) and float(ranking_loss(heads[1]).detach()) > 0


def test_joint_shared_similarity_representation_gets_gradients_from_both_heads():
    model = variant("joint").train()
    feats, captions = make_inputs(4, [6, 3, 9, 2])
    tokens, lengths = pad_tokens(captions)
    shared = [model.sim_enc.sim_tranloc_w.weight, model.sim_enc.sim_tranglo_w.weight, model.img_enc.fc.weight]
    grads = []
    for head in range(2):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        scores = model.head_scores(model.encode_images(feats), model.encode_texts(tokens, lengths))[head]
        (scores.diagonal().sum() - scores.sum() / 4).backward()
        grads.append([p.grad.clone() for p in shared])
        own, other = (model.sim_enc.SGR_module, model.sim_enc.SAF_module)[::1 if head == 0 else -1]
        assert any(p.grad is not None for p in own.parameters())
        assert all(p.grad is None or not p.grad.any() for p in other.parameters())  # only its own head
    for from_sgr, from_saf in zip(*grads):
        assert float(from_sgr.abs().sum()) > 0 and float(from_saf.abs().sum()) > 0
        assert not torch.allclose(from_sgr, from_saf)


def test_config_errors():
    with pytest.raises(ItmatchError, match="scalar"):
        create_model("sgr", similarity="scalar")
    with pytest.raises(ItmatchError, match="attention"):
        create_model("saf", attention="both")
    with pytest.raises(ItmatchError, match="sgr_step"):
        create_model("sgr", sgr_step=-1)
    with pytest.raises(ItmatchError, match="sgraf_joint"):
        create_model("sgraf_joint", module="SGR")
    with pytest.raises(ItmatchError, match="interaction = 'off'"):
        tiny("hrem", instance_intra=False, instance_inter=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Planted synthetic precomp data (36 regions × SMALL img_dim): its train split and caption token ids."""
    root = write_synthetic(tmp_path_factory.mktemp("variants"), n_images={"train": 24}, feature_dim=SMALL["img_dim"])
    split = load_split(root, "train")
    return split, load_vocab(root / "vocab.json").encode_all(split.captions)


def synthetic_batches(synthetic, n_steps: int = 3, size: int = 8):
    """``n_steps`` batches of ``size`` captions with their images, sorted by caption length (longest first)."""
    split, tokens = synthetic
    rng = np.random.default_rng(0)
    for _ in range(n_steps):
        captions = sorted(rng.choice(split.n_captions, size, replace=False), key=lambda c: -len(tokens[c]))
        ids, lengths = pad_tokens([tokens[c] for c in captions])
        feats = torch.from_numpy(split.image_features(split.caption_image[captions]))
        yield feats, ids, lengths


def assert_trains(model: torch.nn.Module, batches) -> None:
    """A few optimisation steps through the trainer's objective: finite losses, a gradient on every parameter
    (SGRAF's self-attention and graph-key biases sit right before a softmax and cancel: present, ~0)."""
    objective = TrainingObjective(model.train(), LossSection(margin=0.2, hardest_negative=True,
                                                              mask_same_image=False))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    reached = set()
    for step, (feats, tokens, lengths) in enumerate(batches):
        loss, _ = objective(feats, tokens, lengths, torch.arange(len(feats)), step=step, epoch=0)
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), name
                if float(p.grad.abs().sum()) > 0:
                    reached.add(name)
        optimizer.step()
    cancelling = ("embedding_common.0.bias", "graph_key_w.bias")
    missing = {n for n, _ in model.named_parameters() if n not in reached and not n.endswith(cancelling)}
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(SGRAF_VARIANTS))
def test_sgraf_variant_trains_with_a_gradient_on_every_parameter(name, synthetic):
    model_name, overrides = SGRAF_VARIANTS[name]
    torch.manual_seed(0)
    vocab_size = max(max(t) for t in synthetic[1]) + 1
    model = create_model(model_name, **{**SMALL, "vocab_size": vocab_size, **overrides})
    assert_trains(model, synthetic_batches(synthetic))


HREM_VARIANTS = {
    "no-visual-relation": {"visual_relation": False},
    "no-textual-relation": {"textual_relation": False},
    "intra-only": {"instance_inter": False},
    "inter-only": {"instance_intra": False},
    "standalone-intra-only": {"interaction": "standalone", "instance_inter": False},
    "no-connection": {"connection": False},
    "no-relevance": {"relevance": False},
    "no-connection-no-relevance": {"connection": False, "relevance": False},
    "no-consistency": {"consistency_loss": False},
    "no-reg": {"reg_weight": 0.0},
}


@pytest.mark.parametrize("name", sorted(HREM_VARIANTS))
def test_hrem_variant_trains_with_a_gradient_on_every_parameter(name, synthetic):
    vocab_size = max(max(t) for t in synthetic[1]) + 1
    model = tiny("hrem", instance_warmup=0, img_dim=SMALL["img_dim"], vocab_size=vocab_size,
                 **HREM_VARIANTS[name])
    assert_trains(model, synthetic_batches(synthetic))


def test_fragment_relation_off_is_the_identity_in_the_embedding():
    full = tiny("hrem").eval()
    off = tiny("hrem", visual_relation=False).eval()
    off.load_state_dict(full.state_dict(), strict=False)
    assert not any(k.startswith("img_rel.") for k in off.state_dict())
    feats, tokens, lengths = random_batch()
    with torch.no_grad():
        regions, _ = off.image_locals(feats, None)
        topk = regions.topk(2, dim=1).values.mean(1)
        expected = _l2(0.8 * topk + 0.2 * regions.mean(1))
        np.testing.assert_allclose(off.encode_images(feats).emb, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(off.encode_texts(tokens, lengths).emb, full.encode_texts(tokens, lengths).emb,
                                   rtol=0, atol=0)
        assert (off.encode_images(feats).emb - full.encode_images(feats).emb).abs().max() > 1e-3


@pytest.mark.parametrize("intra,inter", [(True, False), (False, True)])
def test_fusion_keeps_only_the_switched_on_edges(intra, inter):
    relations = hand_graph()(hand_batch())
    module = InstanceInteraction("fusion", 2, 1, 0.0, weight=1.0, intra=intra, inter=inter).eval()
    with torch.no_grad():  # zero query/key projections: logits are exactly S where allowed
        module.fusion.self_attn.in_proj_weight.zero_()
        module.fusion.self_attn.in_proj_bias.zero_()
    calls = []
    module.fusion.self_attn.register_forward_pre_hook(lambda m, a, k: calls.append(k["attn_mask"]), with_kwargs=True)
    module(torch.randn(4, 2), relations)
    same = (torch.arange(4) >= 2)[:, None] == (torch.arange(4) >= 2)[None, :]
    keep = same if intra else ~same
    expected = relations.relevance.masked_fill(~(relations.connect & keep), float("-inf"))
    torch.testing.assert_close(calls[0], expected)
    standalone = InstanceInteraction("standalone", 8, 2, 0.0, 1.0, intra=intra, inter=inter)
    assert hasattr(standalone, "intra") == intra and hasattr(standalone, "inter") == inter


def test_connection_and_relevance_switches_on_a_hand_built_batch():
    from itmatch.models.hrem import AssociationGraph

    batch = hand_batch()
    full = hand_graph()(batch)
    graph = hand_graph()
    graph.connection = False
    unconnected = graph(batch)
    assert unconnected.connect.all()
    torch.testing.assert_close(unconnected.relevance, full.relevance)  # S unchanged
    no_s = AssociationGraph(topk=2, connect_fraction=0.5, sigma=1.0, relevance=False)
    relations = no_s(batch)
    assert relations.reg_loss is None and not list(no_s.parameters())
    assert torch.equal(relations.connect, full.connect) and not relations.relevance.any()
    bias = attention_bias(relations, 1.5)
    assert torch.equal(bias == 0, full.connect) and torch.isinf(bias[~full.connect]).all()
    model = tiny("hrem", instance_warmup=0, relevance=False).train()
    assert set(model.training_loss(*random_batch())[1]) == {"base", "enhanced", "consistency", "loss"}
