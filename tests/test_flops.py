"""Each model config's FLOP counts (``pair_mflop``, ``encode_mflop``; ``itmatch.models.flops``) equal the matrix
products its model runs, as ``torch.utils.flop_counter`` counts them, at the papers' sizes: the cost estimates
of ``reproduce --dry-run`` and the FLOP floor of ``benchmarks/scoring.py`` rest on them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from itmatch.models import create_model, flops

#: Pair models and the ablation switches that change their work.
PAIR_MODELS = [("sgr", {}), ("saf", {}), ("ave", {}), ("ave", {"similarity": "scalar"}), ("sgraf_joint", {}),
               ("sgr", {"attention": "i2t"}), ("saf", {"attention": "i2t"}),
               ("ave", {"similarity": "scalar", "attention": "i2t"}), ("sgr", {"global_node": False}),
               ("sgr", {"sgr_step": 0}),
               ("tshsr", {}), ("tshsr_i2t", {}), ("tshsr_t2i", {}), ("tshsr", {"hsr_conv": False}),
               ("tshsr", {"hsr_layers": 0}), ("tshsr", {"hsr_layers": 1})]


def _slow_conv2d_flop(x_shape, w_shape, _kernel_size, _bias, _stride, _padding, *, out_shape=None, **_) -> int:
    """FLOPs of ``_slow_conv2d_forward`` (the im2col kernel TSHSR's convolution uses on a CPU). torch 2.13's counter
    maps that operation to its generic convolution formula, whose arguments it does not have (it fails with a
    TypeError)."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def counted(run) -> float:
    """MFLOP of the products ``run()`` makes."""
    mapping = {torch.ops.aten._slow_conv2d_forward: _slow_conv2d_flop}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops() / 1e6


def inputs(words: int, images: int = 2, captions: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(words)
    tokens = torch.randint(4, 50, (captions, words), generator=gen)
    return torch.rand(images, 36, 2048, generator=gen), tokens, torch.full((captions,), words)


@pytest.mark.parametrize("name,args", PAIR_MODELS)
@pytest.mark.parametrize("words", [9, 30])
def test_pair_count_equals_the_products_scored(name: str, args: dict, words: int) -> None:
    """The products of I × C pairs, less those made once per image or caption: from the counts of 3 or 6 images
    by 6 or 12 captions, ``n(6, 12) - n(6, 6) - n(3, 12) + n(3, 6)`` is 18 pairs' work exactly."""
    model = create_model(name, vocab_size=50, **args).eval()
    features, tokens, lengths = inputs(words, 6, 12)
    with torch.no_grad():
        images = model.prepared_images(model.encode_images(features))
        texts = model.encode_texts(tokens, lengths)
        model.score(images, texts)  # folded weights are made once per model, not per call

    def count(n_images: int, n_captions: int) -> float:
        return counted(lambda: model.score(images.select(torch.arange(n_images)),
                                           texts.select(torch.arange(n_captions))))

    per_pair = (count(6, 12) - count(6, 6) - count(3, 12) + count(3, 6)) / 18
    assert model.config.pair_mflop(words) == pytest.approx(per_pair, rel=1e-6)
    assert per_pair > 0.5


@pytest.mark.parametrize("name,args", [("sgr", {}), ("sgr", {"global_node": False}), ("tshsr", {}),
                                       ("vse", {}), ("hrem", {}), ("hrem", {"visual_relation": False})])
@pytest.mark.parametrize("words", [9, 30])
def test_encode_count_equals_the_products_encoded(name: str, args: dict, words: int) -> None:
    model = create_model(name, vocab_size=50, **args).eval()
    features, tokens, lengths = inputs(words)
    with torch.no_grad():
        model.encode_images(features)
        model.encode_texts(tokens, lengths)  # VSE's pooling weights are made once per length
    torch.backends.mha.set_fastpath_enabled(False)  # the fused transformer kernel is invisible to the counter
    try:
        per_item = counted(lambda: (model.encode_images(features), model.encode_texts(tokens, lengths)))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert model.config.encode_mflop(words) == pytest.approx(per_item / 2, rel=0.01)


def test_bert_count_equals_a_bert_encoder() -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512,
                        vocab_size=100, attn_implementation="eager")
    bert = BertModel(config, add_pooling_layer=False).eval()
    tokens = torch.randint(0, 100, (1, 20))
    assert flops.bert(20, 128, 2, 512) / 1e6 == pytest.approx(counted(lambda: bert(tokens)), rel=0.01)
