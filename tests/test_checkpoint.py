"""Model files: the authors' release layout, the native safetensors format, and refusal of bad files."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model

from itmatch.checkpoint import load_checkpoint, load_model, save_model
from itmatch.errors import ItmatchError
from itmatch.scoring import score_matrix

E, S, V, W, D, R = SMALL["embed_size"], SMALL["sim_dim"], SMALL["vocab_size"], SMALL["word_dim"], SMALL["img_dim"], 36


def official_keys(module: str, steps: int = 3) -> list[dict[str, tuple[int, ...]]]:
    """The release's state-dict names and shapes (DESIGN.md §4), written out by hand, one dict per part."""
    image = {"fc.weight": (E, D), "fc.bias": (E,)}
    text = {"embed.weight": (V, W)}
    for suffix in ("", "_reverse"):
        text |= {f"cap_rnn.weight_ih_l0{suffix}": (3 * E, W), f"cap_rnn.weight_hh_l0{suffix}": (3 * E, E),
                 f"cap_rnn.bias_ih_l0{suffix}": (3 * E,), f"cap_rnn.bias_hh_l0{suffix}": (3 * E,)}
    sim: dict[str, tuple[int, ...]] = {}
    for branch, bn in (("embedding_local", R), ("embedding_global", E)):
        sim |= {f"v_global_w.{branch}.0.weight": (E, E), f"v_global_w.{branch}.0.bias": (E,),
                f"v_global_w.{branch}.1.weight": (bn,), f"v_global_w.{branch}.1.bias": (bn,),
                f"v_global_w.{branch}.1.running_mean": (bn,), f"v_global_w.{branch}.1.running_var": (bn,),
                f"v_global_w.{branch}.1.num_batches_tracked": ()}
        sim |= {f"t_global_w.{branch}.0.weight": (E, E), f"t_global_w.{branch}.0.bias": (E,)}
    for side in ("v", "t"):
        sim |= {f"{side}_global_w.embedding_common.0.weight": (1, E), f"{side}_global_w.embedding_common.0.bias": (1,)}
    sim |= {"sim_tranloc_w.weight": (S, E), "sim_tranloc_w.bias": (S,), "sim_tranglo_w.weight": (S, E),
            "sim_tranglo_w.bias": (S,), "sim_eval_w.weight": (1, S), "sim_eval_w.bias": (1,)}
    if module == "SGR":
        for i in range(steps):
            for name in ("graph_query_w", "graph_key_w", "sim_graph_w"):
                sim |= {f"SGR_module.{i}.{name}.weight": (S, S), f"SGR_module.{i}.{name}.bias": (S,)}
    else:
        sim |= {"SAF_module.attn_sim_w.weight": (1, S), "SAF_module.attn_sim_w.bias": (1,),
                "SAF_module.bn.weight": (1,), "SAF_module.bn.bias": (1,), "SAF_module.bn.running_mean": (1,),
                "SAF_module.bn.running_var": (1,), "SAF_module.bn.num_batches_tracked": ()}
    return [image, text, sim]


def write_official(path, model, module: str) -> None:
    """Save ``model``'s weights in the release layout: parts keyed by the hand-written names above."""
    own = model.state_dict()
    parts = []
    for prefix, names in zip(("img_enc", "txt_enc", "sim_enc"), official_keys(module)):
        parts.append({name: own[f"{prefix}.{name}"].clone() for name in names})
    opt = argparse.Namespace(module_name=module, embed_size=E, sim_dim=S, img_dim=D, word_dim=W, num_layers=1,
                             bi_gru=True, sgr_step=3, lambda_softmax=9, vocab_size=V, margin=0.2,
                             max_violation=False, no_imgnorm=False, no_txtnorm=False)
    torch.save({"epoch": 7, "model": parts, "best_rsum": 480.5, "opt": opt, "Eiters": 1234}, path)


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(5, R, D, generator=gen).numpy()
    caps = [torch.randint(4, V, (n,), generator=gen).tolist() for n in (1, 6, 6, 13, 2)]
    return feats, caps


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_documented_names_and_shapes_are_exactly_the_models(module):
    own = small_model(module.lower()).state_dict()
    documented = {f"{p}.{k}": shape for p, part in zip(("img_enc", "txt_enc", "sim_enc"), official_keys(module))
                  for k, shape in part.items()}
    assert set(documented) == set(own)
    assert all(tuple(own[k].shape) == shape for k, shape in documented.items())


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_official_release_loads_and_scores_identically(tmp_path, module):
    model = small_model(module.lower(), seed=11)
    path = tmp_path / "model_best.pth.tar"
    write_official(path, model, module)
    loaded = load_checkpoint(path)
    assert loaded.source == "official"
    assert loaded.model.config.module == module and loaded.model.config.vocab_size == V
    feats, caps = inputs()
    np.testing.assert_array_equal(score_matrix(loaded.model, feats, caps), score_matrix(model, feats, caps))


def test_official_release_with_missing_and_extra_weights_is_refused(tmp_path):
    model = small_model("sgr")
    path = tmp_path / "broken.pth.tar"
    write_official(path, model, "SGR")
    ckpt = torch.load(path, weights_only=False)
    del ckpt["model"][2]["SGR_module.2.sim_graph_w.bias"]
    ckpt["model"][0]["fc2.weight"] = torch.zeros(1)
    torch.save(ckpt, path)
    with pytest.raises(ItmatchError) as err:
        load_model(path)
    message = str(err.value)
    assert "sim_enc.SGR_module.2.sim_graph_w.bias" in message and "img_enc.fc2.weight" in message
    assert "\n" not in message


def test_release_without_batchnorm_counters_loads(tmp_path):
    model = small_model("saf", seed=2)
    path = tmp_path / "old.pth.tar"
    write_official(path, model, "SAF")
    ckpt = torch.load(path, weights_only=False)
    for part in ckpt["model"]:
        for key in [k for k in part if k.endswith("num_batches_tracked")]:
            del part[key]
    torch.save(ckpt, path)
    feats, caps = inputs(3)
    np.testing.assert_array_equal(score_matrix(load_model(path), feats, caps), score_matrix(model, feats, caps))


@pytest.mark.parametrize("name", ["sgr", "saf"])
def test_native_round_trip_is_bit_exact(tmp_path, name):
    model = small_model(name, seed=5, sgr_step=2, lambda_softmax=4.0)
    vocab = {"word2idx": {"<pad>": 0}, "idx2word": {"0": "<pad>"}, "idx": 1}
    save_model(tmp_path / "m.safetensors", model, vocab=vocab)
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.source == "native" and loaded.vocab == vocab
    assert loaded.model.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    feats, caps = inputs(4)
    np.testing.assert_array_equal(score_matrix(loaded.model, feats, caps), score_matrix(model, feats, caps))
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def test_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pth.tar"
    bogus.write_text("hello, I am not a model\n")
    with pytest.raises(ItmatchError, match="not a checkpoint"):
        load_model(bogus)
    with pytest.raises(ItmatchError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pth")


class Arbitrary:  # a class outside the allow-list, pickled into a release
    pass


def test_pickled_objects_need_explicit_trust(tmp_path):
    model = small_model("sgr")
    path = tmp_path / "model.pth.tar"
    write_official(path, model, "SGR")
    ckpt = torch.load(path, weights_only=False)
    ckpt["extra"] = Arbitrary()
    torch.save(ckpt, path)
    with pytest.raises(ItmatchError, match="--trust-checkpoint"):
        load_model(path)
    assert load_checkpoint(path, trust=True).source == "official"
