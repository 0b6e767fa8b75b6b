"""What every endpoint shares: the ``Searcher``, the request ``Limits``, the model and picture threads, the text
query batcher, and the checks of the parameters several endpoints take (``q``, an image id)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from itmatch.errors import ItmatchError
from itmatch.features.images import UnreadableImage
from itmatch.fileio import remove_stale
from itmatch.search.gallery import check_image_id
from itmatch.search.searcher import Searcher
from itmatch.serve.batching import QueryBatcher
from itmatch.serve.errors import ApiError, as_api_error
from itmatch.serve.schema import BLANK

#: The temporary folder a query picture is written to for the extractor (``fileio.scratch_dir``).
QUERY_FOLDER = "itmatch-query"


@dataclasses.dataclass
class Limits:
    """What a request may ask for."""

    max_query_chars: int = 200
    max_top: int = 100
    max_upload_bytes: int = 10 << 20
    max_upload_pixels: int = 16_000_000
    #: a query picture is decoded at the smallest size whose sides are still this long (the detector reads 300)
    query_side: int = 300
    thumbnail_sizes: tuple[int, ...] = (256, 640)
    thumbnails_cached: int = 1024


class Service:
    """One index's ``searcher`` served: ``shortlist`` pictures re-ranked per text query, the model work on
    ``workers`` threads (``worker``), query pictures decoded one at a time on ``pictures``."""

    def __init__(self, searcher: Searcher, shortlist: int, workers: int, limits: Limits) -> None:
        remove_stale(Path(tempfile.gettempdir()), of=QUERY_FOLDER)  # query pictures of a killed server
        self.searcher = searcher
        self.index = searcher.index
        self.shortlist = shortlist
        self.limits = limits
        self.worker = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="itmatch-model")
        self.pictures = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itmatch-picture")  # one decode at a time
        self.batcher = QueryBatcher(lambda queries, top: searcher.search_texts(queries, top=top, shortlist=shortlist),
                                    self.worker, workers)

    def close(self) -> None:
        """Stop the threads (at shutdown), dropping the work not started."""
        self.worker.shutdown(wait=False, cancel_futures=True)
        self.pictures.shutdown(wait=False, cancel_futures=True)

    async def on_model_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on a model thread; a refusal of the input becomes an ``ApiError``."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, functools.partial(function, *args))
        except (UnreadableImage, ItmatchError) as exc:
            raise as_api_error(exc) from None

    def query_text(self, q: str) -> str:
        """``q`` stripped, as ``query_schema`` describes it."""
        if len(q) > self.limits.max_query_chars:
            raise ApiError(422, f"q: the query is longer than {self.limits.max_query_chars} characters; shorten it")
        q = q.strip(BLANK)
        if not q:
            raise ApiError(422, "q: the query is empty; type a few words")
        return q

    def image_id(self, image: int) -> int:
        """``image`` if the index has that picture; else a 404."""
        try:
            return check_image_id(image, self.index.n_images)
        except ItmatchError as exc:
            raise ApiError(404, str(exc)) from None
