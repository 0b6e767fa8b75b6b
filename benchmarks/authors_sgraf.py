"""The SGRAF authors' evaluation as their released code runs it, in our own words: the baseline that
``scoring.py`` measures the engine against.

The released ``evalrank`` (Paranioar/SGRAF, ``evaluation.py``) does two things:

1. ``encode_data``: runs the test loader (batches of 128 (image, caption) items, each batch sorted by caption
   length; an image is encoded once per caption, i.e. 5 times) through the region encoder and the packed Bi-GRU,
   and keeps the results in float64 arrays, captions zero-padded to the longest caption; then keeps every 5th
   image row;
2. ``shard_attn_scores``: 100 images × 100 captions per shard; each shard goes to ``EncoderSimilarity.forward``,
   which computes the images' global vectors and then loops over the shard's captions one at a time (repeat
   the caption over the shard's images, SCAN attention, similarity vectors, SGR steps or SAF, read-out) with
   ``nn.Linear``/``bmm`` calls — ``tests/reference_sgraf.caption_column`` is that loop's body.

Checked once against the released code on the same weights and data (BENCHMARKS.md): same scores, and times
within the stated margin.
"""

from __future__ import annotations

import common  # noqa: F401  (puts tests/, where the reference implementations live, on the path)
import numpy as np
import torch
from reference_sgraf import caption_column, visual_sa

from itmatch.scoring import pad_tokens

LOADER_BATCH = 128
SHARD = 100


@torch.no_grad()
def encode_data(model, features: np.ndarray, captions: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Their ``encode_data`` + image de-duplication: caption ``i`` is paired with image ``i // k``, k = captions
    per image (5 in the papers' splits; a benchmark slice may have fewer); returns image embeddings
    (n_images, R, d) and padded caption embeddings (n_captions, L_max, d), both float64, and the caption lengths.
    """
    model.eval()
    n_items = len(captions)
    per_image = n_items // len(features)
    longest = max(len(c) for c in captions)
    img_embs = cap_embs = None
    for start in range(0, n_items, LOADER_BATCH):
        items = sorted(range(start, min(start + LOADER_BATCH, n_items)), key=lambda i: -len(captions[i]))
        images = torch.from_numpy(np.stack([features[i // per_image] for i in items]))
        tokens, lengths = pad_tokens([captions[i] for i in items])
        img_emb = model.img_enc(images)
        cap_emb = model.txt_enc(tokens, lengths)
        if img_embs is None:
            img_embs = np.zeros((n_items, *img_emb.shape[1:]))
            cap_embs = np.zeros((n_items, longest, cap_emb.shape[2]))
        img_embs[items] = img_emb.numpy()
        cap_embs[items, :cap_emb.shape[1]] = cap_emb.numpy()
    return img_embs[::per_image], cap_embs, [len(c) for c in captions]


@torch.no_grad()
def shard_scores(model, img_embs: np.ndarray, cap_embs: np.ndarray, cap_lens: list[int]) -> np.ndarray:
    """Their ``shard_attn_scores``: scores (n_images, n_captions), 100 × 100 shards, caption by caption."""
    sims = np.zeros((len(img_embs), len(cap_embs)))
    for im_start in range(0, len(img_embs), SHARD):
        for ca_start in range(0, len(cap_embs), SHARD):
            images = torch.from_numpy(img_embs[im_start:im_start + SHARD]).float()
            caps = torch.from_numpy(cap_embs[ca_start:ca_start + SHARD]).float()
            img_glo = visual_sa(model.sim_enc.v_global_w, images)
            columns = [caption_column(model, images, img_glo, caps[i:i + 1, :cap_lens[ca_start + i]])
                       for i in range(len(caps))]
            sims[im_start:im_start + SHARD, ca_start:ca_start + len(caps)] = torch.cat(columns, 1).numpy()
    return sims
