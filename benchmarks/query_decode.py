"""Query-picture decoding at full size (what the service did) against reduced decoding (what it does now): time
and peak traced memory of `decode_image`, interleaved, the minimum of 3.

    OMP_NUM_THREADS=1 python benchmarks/query_decode.py
"""

from __future__ import annotations

import time
import tracemalloc

import cv2
import numpy as np

from itmatch.features.images import decode_image, reduction

rng = np.random.default_rng(0)
photo = rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
photo = cv2.GaussianBlur(photo, (0, 0), 3)
jpeg = cv2.imencode(".jpg", photo)[1].tobytes()
rgba = np.dstack([photo[:, :, :3], np.full((3000, 4000), 200, np.uint8)])
png = cv2.imencode(".png", rgba)[1].tobytes()
for name, data in (("JPEG 4000x3000", jpeg), ("RGBA PNG 4000x3000", png)):
    k = reduction(4000, 3000, 300)
    best = {}
    for _ in range(3):
        for label, reduce in (("full", 1), (f"1/{k}", k)):
            tracemalloc.start()
            t = time.perf_counter()
            decode_image(data, name, reduce)
            dt = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            old = best.get(label, (9e9, 9e9))
            best[label] = (min(old[0], dt), min(old[1], peak))
    for label, (dt, peak) in best.items():
        print(f"{name} ({len(data) / 1e6:.1f} MB file), decode {label}: {dt * 1000:.0f} ms, peak {peak / 1e6:.0f} MB")
