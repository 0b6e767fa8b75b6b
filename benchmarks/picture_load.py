"""Text-query latency while big query pictures are uploaded, against a live `itmatch serve`.

    python benchmarks/picture_load.py --index INDEX [--pictures 3] [--side 4000] [--kind png|jpeg]

Starts `itmatch serve` (one model thread) on a free local port, then sends ``--pictures`` uploads at once of a
``--side`` x ``--side`` picture (an RGBA PNG or a JPEG of a smooth picture: a small file that decodes big) while
timing text queries one after another; prints the text queries' median and worst latency, the uploads' time and
how far the server's resident memory rose above its level before the uploads (sampled every 10 ms). The server
runs `python -m itmatch` in the current folder: run this from the root of the checkout you want to measure.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import urllib.request
import uuid

import cv2
import numpy as np
from common import start_server


def upload(base: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{base}/search/image?top=3", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--pictures", type=int, default=3)
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--kind", choices=("png", "jpeg"), default="png")
    args = parser.parse_args()
    server, port = start_server(args.index, 1)
    base = f"http://127.0.0.1:{port}"
    try:
        ramp = np.linspace(0, 255, args.side, dtype=np.uint8)
        picture = np.dstack([np.tile(ramp, (args.side, 1))] * 3 + [np.full((args.side, args.side), 200, np.uint8)])
        data = cv2.imencode(".png", picture)[1].tobytes() if args.kind == "png" else \
            cv2.imencode(".jpg", picture[:, :, :3])[1].tobytes()

        def text_ms() -> float:
            started = time.perf_counter()
            urllib.request.urlopen(f"{base}/search?q=a+red+circle&top=5", timeout=600).read()
            return 1000 * (time.perf_counter() - started)

        upload(base, cv2.imencode(".png", picture[:64, :64])[1].tobytes())  # loads the detector: not timed
        quiet = min(text_ms() for _ in range(10))
        rss_before = rss_mb(server.pid)
        rss_peak = [rss_before]
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(upload(base, data))) for _ in range(args.pictures)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        busy: list[float] = []

        def sample() -> None:
            while any(t.is_alive() for t in threads):
                rss_peak.append(rss_mb(server.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        while any(t.is_alive() for t in threads):
            busy.append(text_ms())
        for thread in [*threads, sampler]:
            thread.join()
        uploads = time.perf_counter() - started
        print(f"{args.pictures} uploads of a {args.side}x{args.side} {args.kind} ({len(data) / 1e3:.0f} KB), answers "
              f"{sorted(statuses)}, {uploads:.1f} s; text queries alone {quiet:.0f} ms, during the uploads median "
              f"{statistics.median(busy):.0f} ms, worst {max(busy):.0f} ms ({len(busy)} queries); server RSS "
              f"{rss_before:.0f} MB before the uploads, +{max(rss_peak) - rss_before:.0f} MB at most during them")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
