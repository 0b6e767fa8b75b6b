"""The authors' release layout both ways: sizes read from weight shapes (opt only where shapes cannot tell),
``itmatch convert --to release``, the round trip release → native → release, and a written release read the
way the authors' ``evaluation.py`` reads one."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model
from test_checkpoint import inputs, write_official
from torch import nn

from itmatch.checkpoint import load_checkpoint, load_model
from itmatch.cli import main
from itmatch.errors import ItmatchError
from itmatch.release import release_checkpoint
from itmatch.scoring import score_matrix


def split_parts(model) -> list[dict]:
    """The model's weights as the release's three part dicts (names after the img_enc/txt_enc/sim_enc prefix;
    tests/test_checkpoint.py checks these names against the release's, written out by hand)."""
    parts = [{}, {}, {}]
    for key, value in model.state_dict().items():
        prefix, _, name = key.partition(".")
        parts[("img_enc", "txt_enc", "sim_enc").index(prefix)][name] = value.clone()
    return parts


def save_parts(path, parts, **opt) -> None:
    torch.save({"epoch": 3, "model": parts, "best_rsum": 400.0, "opt": argparse.Namespace(**opt), "Eiters": 99},
               path)


@pytest.mark.parametrize("name, sizes", [
    ("sgr", dict(sim_dim=8, sgr_step=2, num_layers=2, bi_gru=False, embed_size=20, word_dim=6, img_dim=10)),
    ("saf", dict(sim_dim=12, num_regions=36, vocab_size=31)),
])
def test_every_size_comes_from_the_weights(tmp_path, name, sizes):
    model = small_model(name, seed=4, **sizes)
    path = tmp_path / "model_best.pth.tar"
    save_parts(path, split_parts(model), module_name=name.upper())  # an opt that says nothing of sizes
    loaded = load_model(path)
    assert loaded.config == model.config
    feats, caps = inputs(1)
    feats = feats[:, :, : model.config.img_dim]
    caps = [[i % model.config.vocab_size for i in c] for c in caps]
    np.testing.assert_array_equal(score_matrix(loaded, feats, caps), score_matrix(model, feats, caps))


def test_opt_gives_only_what_shapes_cannot_tell(tmp_path):
    model = small_model("sgr", seed=2, lambda_softmax=4.0, txt_norm=False)
    path = tmp_path / "m.pth.tar"
    save_parts(path, split_parts(model), module_name="SGR", lambda_softmax=4.0, no_txtnorm=True, sim_dim=16)
    config = load_model(path).config
    assert (config.lambda_softmax, config.txt_norm, config.img_norm) == (4.0, False, True)
    save_parts(path, split_parts(small_model("sgr")), module_name="SGR")
    assert load_model(path).config.lambda_softmax == 9.0  # the release's fixed temperature


def test_opt_that_disagrees_with_the_weights_is_refused(tmp_path):
    path = tmp_path / "m.pth.tar"
    save_parts(path, split_parts(small_model("sgr")), module_name="SAF", sim_dim=999, embed_size=SMALL["embed_size"])
    with pytest.raises(ItmatchError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "opt.module_name is 'SAF' but the weights say 'SGR'" in message
    assert "opt.sim_dim is 999 but the weights say 16" in message and "embed_size" not in message


def test_release_structure_errors_name_the_weight(tmp_path):
    path = tmp_path / "m.pth.tar"
    parts = split_parts(small_model("sgr"))
    del parts[2]["sim_tranloc_w.weight"]
    save_parts(path, parts, module_name="SGR")
    with pytest.raises(ItmatchError, match=r"m\.pth\.tar: missing weight 'sim_enc\.sim_tranloc_w\.weight'"):
        load_model(path)
    parts = split_parts(small_model("sgr"))
    parts[2] |= {k: v for k, v in split_parts(small_model("saf"))[2].items() if k.startswith("SAF_module.")}
    save_parts(path, parts, module_name="SGR")
    with pytest.raises(ItmatchError, match="holds both SGR_module.* and SAF_module.* weights"):
        load_model(path)
    save_parts(path, split_parts(small_model("sgr", sgr_step=0)), module_name="SGR")
    with pytest.raises(ItmatchError, match="holds neither of SGR_module"):
        load_model(path)


# --- a literal re-implementation of the authors' module tree and of evaluation.py's loading ---------------

class ImageEncoder(nn.Module):
    def __init__(self, img_dim, embed_size):
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)

    def load_state_dict(self, state_dict):  # the release keeps only its own names for the image encoder
        own = self.state_dict()
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own})


class TextEncoder(nn.Module):
    def __init__(self, vocab_size, word_dim, embed_size, num_layers, use_bi_gru):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.cap_rnn = nn.GRU(word_dim, embed_size, num_layers, batch_first=True, bidirectional=use_bi_gru)


def self_attention(embed_size, batchnorm_sizes):
    def branch(bn):
        layers = [nn.Linear(embed_size, embed_size)] + ([nn.BatchNorm1d(bn)] if bn else []) + [nn.Tanh(),
                                                                                           nn.Dropout(0.4)]
        return nn.Sequential(*layers)

    sa = nn.Module()
    sa.embedding_local, sa.embedding_global = branch(batchnorm_sizes[0]), branch(batchnorm_sizes[1])
    sa.embedding_common = nn.Sequential(nn.Linear(embed_size, 1))
    return sa


class Similarity(nn.Module):
    def __init__(self, embed_size, sim_dim, module_name, sgr_step):
        super().__init__()
        self.v_global_w = self_attention(embed_size, (36, embed_size))
        self.t_global_w = self_attention(embed_size, (0, 0))
        self.sim_tranloc_w = nn.Linear(embed_size, sim_dim)
        self.sim_tranglo_w = nn.Linear(embed_size, sim_dim)
        self.sim_eval_w = nn.Linear(sim_dim, 1)
        if module_name == "SGR":
            steps = []
            for _ in range(sgr_step):
                step = nn.Module()
                step.graph_query_w, step.graph_key_w, step.sim_graph_w = (nn.Linear(sim_dim, sim_dim)
                                                                           for _ in range(3))
                steps.append(step)
            self.SGR_module = nn.ModuleList(steps)
        else:
            self.SAF_module = nn.Module()
            self.SAF_module.attn_sim_w = nn.Linear(sim_dim, 1)
            self.SAF_module.bn = nn.BatchNorm1d(1)


def authors_evalrank_load(path, vocab_size):
    """evaluation.py's evalrank up to the model: torch.load, opt from the file, vocab_size from the vocabulary,
    the model built from opt, and its three parts' load_state_dict (strict for text and similarity)."""
    checkpoint = torch.load(path, weights_only=False)
    opt = checkpoint["opt"]
    assert isinstance(checkpoint["epoch"], int)
    opt.vocab_size = vocab_size
    parts = [ImageEncoder(opt.img_dim, opt.embed_size),
             TextEncoder(opt.vocab_size, opt.word_dim, opt.embed_size, opt.num_layers, opt.bi_gru),
             Similarity(opt.embed_size, opt.sim_dim, opt.module_name, opt.sgr_step)]
    for part, state in zip(parts, checkpoint["model"]):
        part.load_state_dict(state)
    return parts, opt


@pytest.mark.parametrize("module", ["SGR", "SAF"])
def test_release_native_release_round_trip_and_the_authors_loader(tmp_path, module):
    model = small_model(module.lower(), seed=8)
    original = tmp_path / "model_best.pth.tar"
    write_official(original, model, module)
    native, back = tmp_path / "m.safetensors", tmp_path / "back.pth.tar"
    assert main(["convert", str(original), str(native)]) == 0
    assert main(["convert", str(native), str(back), "--to", "release"]) == 0
    first, second = torch.load(original, weights_only=False), torch.load(back, weights_only=False)
    for a, b in zip(first["model"], second["model"]):
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # our file loads without pickle beyond the Namespace, and in the authors' loading code
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.load(back, weights_only=True)
    parts, opt = authors_evalrank_load(back, SMALL["vocab_size"])
    assert (opt.module_name, opt.sim_dim, opt.embed_size, opt.data_name) == (module, SMALL["sim_dim"],
                                                                           SMALL["embed_size"], "f30k_precomp")
    own = model.state_dict()
    for prefix, part in zip(("img_enc", "txt_enc", "sim_enc"), parts):
        for key, value in part.state_dict().items():
            assert torch.equal(value, own[f"{prefix}.{key}"]), key
    feats, caps = inputs(2)
    np.testing.assert_array_equal(score_matrix(load_model(back), feats, caps), score_matrix(model, feats, caps))


def test_a_training_checkpoint_exports_with_its_recipe(tmp_path):
    model = small_model("saf", seed=1)
    from itmatch.train.config import load_config

    config = load_config("configs/saf_f30k_short.toml").to_dict()
    checkpoint = tmp_path / "best.pt"
    torch.save({"format": "itmatch", "format_version": 1, "model_name": "saf", "model_args": model.model_args(),
                "state_dict": model.state_dict(), "epoch": 12, "step": 3456, "best_rsum": 501.25,
                "config": config}, checkpoint)
    out = tmp_path / "model_best.pth.tar"
    assert main(["convert", str(checkpoint), str(out), "--to", "release", "--data-name", "coco_precomp"]) == 0
    written = torch.load(out, weights_only=False)
    assert (written["epoch"], written["Eiters"], written["best_rsum"]) == (12, 3456, 501.25)
    opt = written["opt"]
    assert (opt.learning_rate, opt.num_epochs, opt.lr_update, opt.data_name) == (0.0003, 20, 10, "coco_precomp")
    assert load_checkpoint(out).source == "official"


@pytest.mark.parametrize("name, overrides, message", [
    ("ave", {}, "only SGR and SAF models"),
    ("sgr", {"lambda_softmax": 4.0}, "this model has lambda_softmax=4.0"),
    ("saf", {"global_node": False}, "this model has global_node=False"),
    ("sgr", {"sgr_step": 0}, "this model has sgr_step=0"),
])
def test_models_the_authors_code_cannot_rebuild_are_refused(name, overrides, message):
    with pytest.raises(ItmatchError, match=message):
        release_checkpoint(small_model(name, **overrides))


def test_convert_to_release_refuses_bad_names_and_writes_nothing(tmp_path, capsys):
    native = tmp_path / "m.safetensors"
    from itmatch.checkpoint import save_model

    save_model(native, small_model("sgr"))
    assert main(["convert", str(native), str(tmp_path / "out.safetensors"), "--to", "release"]) == 2
    assert "name the output *.pth.tar" in capsys.readouterr().err
    assert main(["convert", str(native), str(tmp_path / "x.pth.tar"), "--to", "onnx"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
