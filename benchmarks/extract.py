"""Region feature extraction speed on real Tux Paint pictures (SSD-MobileNetV2 through OpenCV DNN, CPU).

Takes the first ``--pictures`` captioned stamps in the dataset's order (PNG and SVG as the dataset uses them) and
times, after one warm-up batch: decoding alone (PNG decode / SVG render, alpha onto white), the extractor
(decode + network + region pooling), and the full ``extract_features`` run into a fresh folder (adds memmap writes
and the progress record). Prints pictures per second (wall clock) for each, and the CPU seconds per picture the
process used (all threads), which stays meaningful when other jobs share the machine.

    python benchmarks/extract.py                     # 200 pictures, batch 8
    python benchmarks/extract.py --pictures 50 --batch-size 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2

from itmatch.data.sources.tuxpaint import find_stamps, stamps_folder
from itmatch.features import extract_features, get_extractor, load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--extractor", default="ssd-mobilenet-v2")
    args = parser.parse_args()

    folder, version = stamps_folder()
    paths = [s.image for s in find_stamps(folder)[0][: args.pictures]]
    svg = sum(p.suffix == ".svg" for p in paths)
    print(f"tuxpaint-stamps-default {version}: {len(paths)} pictures ({svg} SVG), batch {args.batch_size}, "
          f"OpenCV {cv2.__version__} with {cv2.getNumThreads()} threads")

    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        load_image(path)
    decode_s, decode_cpu = time.perf_counter() - start, time.process_time() - cpu

    extractor = get_extractor(args.extractor)
    extractor.extract(paths[: args.batch_size])  # warm-up: loads the network
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(paths), args.batch_size):
        extractor.extract(paths[i:i + args.batch_size])
    extract_s, extract_cpu = time.perf_counter() - start, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        result = extract_features(paths, Path(tmp) / "features", extractor=extractor, batch_size=args.batch_size,
                                  progress=False)
        store_s, store_cpu = time.perf_counter() - start, time.process_time() - cpu
        shape = result.features.shape

    n = len(paths)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for label, wall, cpu_s in (("decode only", decode_s, decode_cpu), ("extractor", extract_s, extract_cpu),
                               ("extract_features", store_s, store_cpu)):
        print(f"{label:18} {n / wall:6.1f} pictures/s   {1000 * cpu_s / n:5.0f} ms CPU per picture")
    print(f"output {shape}")


if __name__ == "__main__":
    main()
