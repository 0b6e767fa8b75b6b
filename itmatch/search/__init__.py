"""Search over a user's pictures: an index (FAISS over embeddings, stored re-ranker encodings), two-stage
retrieval, and attention explanations. See ``docs/search.md``."""

from itmatch.search.explain import explain_pair
from itmatch.search.build import add_to_index, build_index
from itmatch.search.index import Index, open_index
from itmatch.search.searcher import SearchResult, Searcher

__all__ = ["Index", "SearchResult", "Searcher", "add_to_index", "build_index", "explain_pair", "open_index"]
