"""A short training run on real region features of the Tux Paint stamps beats random retrieval by a wide margin.

The set: the first 300 stamps of the Debian package (SSD-MobileNetV2 features, cached in ``$ITMATCH_CACHE`` so
`make demo` and later runs reuse them), 200 for training, 50 for dev, 50 for test, one caption each. Chance on 50
test pictures: R@1/5/10 = 2/10/20 % each way, rsum 64, with a standard deviation of about 12 under random scores
(R@10 alone is Binomial(50, 0.2) / 50: ±5.7 points). The bar, twice chance, is five of those above it; the run
measured rsum 180 (2026-11-23).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from itmatch.data.sources.tuxpaint import build_tuxpaint, stamps_folder
from itmatch.errors import ItmatchError
from itmatch.evaluate import evaluate_split
from itmatch.train import load_config, train

ROOT = Path(__file__).resolve().parents[1]
CHANCE_RSUM = 2 * (2 + 10 + 20)


@pytest.fixture(scope="module")
def tuxpaint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        stamps_folder()
    except ItmatchError as exc:
        pytest.skip(f"Tux Paint stamps unavailable ({exc}); run scripts/install_system_deps.sh")
    out = tmp_path_factory.mktemp("tuxpaint") / "data"
    build_tuxpaint(out, limit=300, dev=50, test=50, progress=False)
    return out


def test_short_vse_training_beats_chance_by_far(tuxpaint: Path, tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "demo_vse.toml", ["schedule.epochs=12", "schedule.lr_decay_epochs=[10]",
                                                              "data.batch_size=32"])
    result = train(config, data=tuxpaint, vocab=tuxpaint / "vocab.json", out=tmp_path / "run", device="cpu",
                   progress=False)
    test = evaluate_split(tuxpaint, "test", checkpoints=[result.out / "best.pt"], progress=False)
    print(f"test rsum {test['rsum']:.1f} (chance {CHANCE_RSUM}): i2t {test['i2t']}, t2i {test['t2i']}")
    assert test["rsum"] >= 2 * CHANCE_RSUM, test
