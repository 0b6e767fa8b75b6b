"""Two-stage retrieval over an index: the embedding model shortlists, the cross-attention models re-rank.

Text → pictures: the query's embedding is looked up in the FAISS index of picture embeddings (``shortlist``
nearest), then every re-ranker scores (shortlisted picture, query) pairs from the picture encodings stored in the
index, and the pictures are ordered by the mean re-ranker score. Picture → texts (a picture file, or region
features): the picture's embedding shortlists captions, the re-rankers score (picture, caption) pairs.
``exhaustive`` re-ranks the whole gallery instead of a shortlist. Shortlisted ids are scored in ascending order,
so a shortlist holding the whole gallery computes exactly what ``exhaustive`` does.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.loading import caption_tokens, check_known_words
from itmatch.models.base import Encoding, Matcher
from itmatch.models.ensemble import member_mean
from itmatch.scoring import default_tiling, encode_texts, images_per_tile, resolve_device
from itmatch.search.explain import explain_pair
from itmatch.search.gallery import check_image_id
from itmatch.search.index import Index, load_index_models, open_index

#: Captions encoded at once for image→text re-ranking.
CAPTION_BATCH = 128
#: Picture queries re-ranked together: the captions shortlisted for any of them are encoded once.
PICTURE_GROUP = 32


@dataclasses.dataclass
class SearchResult:
    """The ``hits`` of one query, best first, and the work done: ``candidates`` re-ranked (pairs scored by each
    re-ranker; 0 without re-rankers) and wall ``seconds``."""

    hits: list[dict[str, Any]]
    candidates: int
    seconds: float


class Searcher:
    """Searches one index with its stored models (see the module docstring). Several threads may search at once."""

    def __init__(self, index: Index | str | Path, *, device: str = "cpu", nprobe: int | None = None) -> None:
        self.index = index if isinstance(index, Index) else open_index(index)
        self.device = resolve_device(device)
        models = load_index_models(self.index.directory, self.index.meta, str(self.device))
        self.embedder, self.embedder_vocab = models.embedder, models.embedder_vocab
        self.rerankers: list[tuple[Matcher, Any]] = [(model, self._shared(vocab)) for model, vocab in models.rerankers]
        if nprobe is not None:
            for search_index in (self.index.image_faiss, self.index.caption_faiss):
                if search_index is not None and hasattr(search_index, "nprobe"):
                    search_index.nprobe = nprobe
        meta = self.index.meta
        blank = torch.zeros(1, meta["regions"], meta["dim"], device=self.device)
        with torch.inference_mode():  # the encoding types the stored fields are put back into
            self._templates = [model.encode_images(blank) for model, _ in self.rerankers]
        self._caption_tokens: dict[int, list[list[int]]] = {}
        self._extractor: Any = None
        self._extractor_lock = threading.Lock()  # the extractor's network is not thread-safe; the models are

    @property
    def model_names(self) -> dict[str, Any]:
        return {"embedder": self.embedder.model_name, "rerankers": [m.model_name for m, _ in self.rerankers]}

    # -- text → pictures ---------------------------------------------------------------------------------
    def search_text(self, query: str, *, top: int = 10, shortlist: int = 100, exhaustive: bool = False
                    ) -> SearchResult:
        """The ``top`` pictures for ``query`` (see ``search_texts``)."""
        return self.search_texts([query], top=top, shortlist=shortlist, exhaustive=exhaustive)[0]

    def search_texts(self, queries: Sequence[str], *, top: int = 10, shortlist: int = 100,
                     exhaustive: bool = False) -> list[SearchResult]:
        """The ``top`` pictures for each query: ``shortlist`` pictures by embedding (all with ``exhaustive``),
        re-ranked by the mean score of the re-rankers. Hits: ``image`` id, ``score``, ``embedding_score``,
        ``path``, ``caption`` (its first caption), ``width``, ``height``."""
        _check_counts(top, shortlist)
        for query in queries:
            if not query.strip():
                raise ItmatchError("empty query; type a few words")
            check_known_words(self.embedder, self.embedder_vocab, query)
        start = time.perf_counter()
        tokens: dict[int, list[list[int]]] = {}  # the queries' token ids, once per vocabulary
        with torch.inference_mode():
            embedded = self._encode_query_texts(self.embedder, self.embedder_vocab, queries, tokens)
            vectors = torch.cat([embedded[q].emb for q in range(len(queries))]).float().cpu().numpy()
            candidates = self._shortlist(self.index.image_faiss, vectors, self.index.n_images, top, shortlist,
                                         exhaustive)
            texts = [self._encode_query_texts(model, vocab, queries, tokens) for model, vocab in self.rerankers]
            results = []
            for q, ids in enumerate(candidates):
                first = self.index.image_embeddings(ids) @ vectors[q]
                scores = self._rerank_pictures([t[q] for t in texts], ids) if self.rerankers else first
                results.append((self._ranked(ids, scores, first, top, self._picture_hit), len(ids)))
        return _timed(results, self.rerankers, start)

    def _shared(self, vocab: Any) -> Any:
        """The embedding model's vocabulary object when ``vocab`` equals it (queries are then tokenized once)."""
        return self.embedder_vocab if vocab is not None and vocab == self.embedder_vocab else vocab

    def _encode_query_texts(self, model: Matcher, vocab: Any, queries: Sequence[str],
                            tokens: dict[int, list[list[int]]]) -> list[Encoding]:
        """One encoding per query (encoded in batches of similar length); ``tokens`` caches token ids by
        tokenizer (the vocabulary, or a model's own tokenizer)."""
        key = id(model if model.tokenize is not None else vocab)
        if key not in tokens:
            tokens[key] = caption_tokens(model, vocab, list(queries))
        out: list[Encoding] = [None] * len(queries)  # type: ignore[list-item]
        for index, chunk in encode_texts(model, tokens[key], self.device):
            for row, q in enumerate(index):
                out[q] = chunk.select(slice(row, row + 1))
        return out

    def _rerank_pictures(self, texts: list[Encoding], ids: np.ndarray) -> np.ndarray:
        """Mean re-ranker score (k,) of pictures ``ids`` against one query (``texts``: its encoding per model),
        in tiles of pictures that keep a tile's working memory within the engine's budget."""
        budget = default_tiling(self.device)[0]

        def member_scores(k: int, model: Matcher, text: Encoding) -> list[np.ndarray]:
            step = images_per_tile(model, text, len(ids), budget)
            return [np.concatenate([model.score(self._stored_encoding(k, ids[lo:lo + step]), text)[:, 0].float()
                                    .cpu().numpy() for lo in range(0, len(ids), step)])]

        return member_mean(member_scores(k, model, text)
                           for k, ((model, _), text) in enumerate(zip(self.rerankers, texts)))[0]

    def _stored_encoding(self, reranker: int, ids: np.ndarray) -> Encoding:
        fields = self.index.encoding_fields(reranker, ids)
        return dataclasses.replace(self._templates[reranker],
                                   **{name: torch.from_numpy(v).to(self.device) for name, v in fields.items()})

    def _picture_hit(self, image: int) -> dict[str, Any]:
        picture = self.index.pictures[image]
        return {"image": image, "path": picture.get("path"), "caption": self.index.first_caption(image),
                "width": picture.get("width"), "height": picture.get("height")}

    # -- picture → texts ---------------------------------------------------------------------------------
    def picture_query_problem(self) -> str | None:
        """Why the index cannot answer picture files (no captions to find, or features not made by an extractor
        that reads pictures); None when it can. The service's status, its 409 and ``search_picture`` all ask
        here."""
        from itmatch.features.precomputed import NAME as PRECOMPUTED

        config = self.index.meta.get("extractor")
        if not self.index.n_captions:
            return ("the index has no captions to search; build it from a dataset folder (--features DATA --split "
                    "SPLIT) for picture → text search")  # no server path: the service shows it
        if not config or config.get("name") == PRECOMPUTED:
            return ("this index's features were not made by an extractor that reads pictures "
                    f"({(config or {}).get('name', 'unknown')}); picture queries need `itmatch extract` or "
                    "`itmatch data build` features")
        return None

    def search_picture(self, path: str | Path, *, top: int = 10, shortlist: int = 100, exhaustive: bool = False
                       ) -> SearchResult:
        """The ``top`` captions for a picture file, read with the extractor that made the index's features."""
        problem = self.picture_query_problem()
        if problem is not None:
            raise ItmatchError(problem)
        with self._extractor_lock:
            regions = self.extractor().extract([Path(path)])[0]
        return self.search_features(regions.features[None], top=top, shortlist=shortlist, exhaustive=exhaustive)[0]

    def extractor(self) -> Any:
        """The region extractor of the index's features (made once), for query pictures."""
        if self._extractor is None:
            from itmatch.features import extractor_from_config

            self._extractor = extractor_from_config(self.index.meta["extractor"])
        return self._extractor

    def search_features(self, features: np.ndarray, *, top: int = 10, shortlist: int = 100,
                        exhaustive: bool = False) -> list[SearchResult]:
        """The ``top`` captions for each picture of ``features`` (Q, R, D). Hits: ``caption_id``, ``caption``,
        ``image`` (the picture it describes), ``score``, ``embedding_score``, ``path``."""
        _check_counts(top, shortlist)
        if self.index.caption_faiss is None:
            raise ItmatchError(f"{self.index.directory}: the index has no captions to search; build it from a "
                               "dataset folder (--features DATA --split SPLIT) for picture → text search")
        start = time.perf_counter()
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32)).to(self.device)
        results = []
        with torch.inference_mode():
            vectors = self.embedder.encode_images(feats).emb.float().cpu().numpy()
            candidates = self._shortlist(self.index.caption_faiss, vectors, self.index.n_captions, top, shortlist,
                                         exhaustive)
            for lo in range(0, len(feats), PICTURE_GROUP):
                group = slice(lo, lo + PICTURE_GROUP)
                reranked = self._rerank_captions(feats[group], candidates[group]) if self.rerankers else None
                for q, ids in enumerate(candidates[group], lo):
                    first = self.index.caption_embeddings(ids) @ vectors[q]
                    scores = reranked[q - lo] if reranked is not None else first
                    results.append((self._ranked(ids, scores, first, top, self._caption_hit), len(ids)))
        return _timed(results, self.rerankers, start)

    def _rerank_captions(self, pictures: torch.Tensor, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Mean re-ranker score of each picture of ``pictures`` (Q, R, D) against its candidate captions; a
        caption shortlisted for several pictures of the group is encoded once."""
        wanted = np.unique(np.concatenate(candidates))

        def member_scores(k: int, model: Matcher, vocab: Any) -> list[np.ndarray]:
            if k not in self._caption_tokens:
                self._caption_tokens[k] = caption_tokens(model, vocab, self.index.captions)
            chunks = encode_texts(model, [self._caption_tokens[k][j] for j in wanted], self.device, CAPTION_BATCH)
            texts = type(chunks[0][1]).cat([chunk for _, chunk in chunks])
            order = np.concatenate([index for index, _ in chunks])
            row_of = np.empty(len(wanted), dtype=np.int64)
            row_of[order] = np.arange(len(order))  # the row of each wanted caption in ``texts``
            images = model.encode_images(pictures)
            return [model.score(images.select(slice(q, q + 1)),
                                texts.select(torch.from_numpy(row_of[np.searchsorted(wanted, ids)]).to(self.device))
                                )[0].float().cpu().numpy() for q, ids in enumerate(candidates)]

        return member_mean(member_scores(k, model, vocab) for k, (model, vocab) in enumerate(self.rerankers))

    def _caption_hit(self, caption: int) -> dict[str, Any]:
        image = int(self.index.caption_image[caption])
        return {"caption_id": caption, "caption": self.index.captions[caption], "image": image,
                "path": self.index.pictures[image].get("path")}

    # -- shared ------------------------------------------------------------------------------------------
    @staticmethod
    def _shortlist(search_index: Any, vectors: np.ndarray, n: int, top: int, shortlist: int,
                   exhaustive: bool) -> list[np.ndarray]:
        """Per query the candidate ids, ascending: the ``max(shortlist, top)`` nearest, or all ``n``."""
        if exhaustive:
            return [np.arange(n)] * len(vectors)
        _, ids = search_index.search(np.ascontiguousarray(vectors), min(n, max(shortlist, top)))
        return [np.sort(row[row >= 0]) for row in ids]

    @staticmethod
    def _ranked(ids: np.ndarray, scores: np.ndarray, first: np.ndarray, top: int, describe: Any
                ) -> list[dict[str, Any]]:
        order = np.argsort(-scores, kind="stable")[:top]
        return [{**describe(int(ids[i])), "score": float(scores[i]), "embedding_score": float(first[i])}
                for i in order]

    # -- explanations ------------------------------------------------------------------------------------
    def explain(self, image: int, text: str) -> dict[str, Any]:
        """Attention data of picture ``image`` and ``text`` for the index's cross-attention re-rankers (see
        ``itmatch.search.explain.explain_pair``), with the picture's ``image`` id, ``path``, size."""
        check_image_id(image, self.index.n_images)
        data = explain_pair(self.rerankers, self.index.features(np.array([image]))[0], text,
                            self.index.boxes(image), self.device)
        return {"image": image, **{k: v for k, v in self._picture_hit(image).items() if k != "image"}, **data}


def _check_counts(top: int, shortlist: int) -> None:
    if top < 1 or shortlist < 1:
        raise ItmatchError(f"--top and --shortlist must be at least 1, got {top} and {shortlist}")


def _timed(results: list[tuple[list[dict[str, Any]], int]], rerankers: list, start: float) -> list[SearchResult]:
    """``SearchResult``s of (hits, candidates) pairs; each query gets an equal share of the time since ``start``."""
    seconds = (time.perf_counter() - start) / max(1, len(results))
    return [SearchResult(hits, candidates if rerankers else 0, seconds) for hits, candidates in results]
