"""Training recipes: the published settings, strict keys, typed overrides, TOML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from itmatch.errors import ItmatchError
from itmatch.train.config import changed_keys, config_from_dict, dumps, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_published_recipes() -> None:
    # (model, epochs, decay epochs, lr, decay factor): the paper's settings and seed 000's shortened SAF
    expected = {"sgr_f30k": ("sgr", 40, [30], 2e-4, 0.1), "saf_f30k": ("saf", 30, [20], 2e-4, 0.1),
                "sgr_coco": ("sgr", 20, [10], 2e-4, 0.1), "saf_coco": ("saf", 20, [10], 2e-4, 0.1),
                "saf_f30k_short": ("saf", 20, [10], 3e-4, 0.2)}
    for name, (model, epochs, decay_at, lr, factor) in expected.items():
        cfg = load_config(CONFIGS / f"{name}.toml")
        assert (cfg.model.name, cfg.schedule.epochs, cfg.schedule.lr_decay_epochs) == (model, epochs, decay_at)
        assert (cfg.optim.lr, cfg.schedule.lr_decay) == (lr, factor)
        assert (cfg.optim.name, cfg.optim.grad_clip, cfg.optim.weight_decay) == ("adam", 2.0, 0.0)
        assert (cfg.data.batch_size, cfg.loss.margin, cfg.loss.hardest_negative) == (128, 0.2, True)
        assert not cfg.loss.mask_same_image and cfg.data.dev_subset
        assert cfg.model.args["dropout"] == 0.4 and cfg.model.args["embed_size"] == 1024


def test_every_checked_in_recipe_loads() -> None:
    for path in CONFIGS.glob("*.toml"):
        config = load_config(path)
        assert config.model.name, path


def test_learning_rate_schedule() -> None:
    sgr = load_config(CONFIGS / "sgr_f30k.toml")
    assert [sgr.lr_at(e) for e in (0, 29, 30, 39)] == pytest.approx([2e-4, 2e-4, 2e-5, 2e-5])
    short = load_config(CONFIGS / "saf_f30k_short.toml")
    assert [short.lr_at(e) for e in (9, 10, 19)] == pytest.approx([3e-4, 6e-5, 6e-5])
    two = load_config(CONFIGS / "sgr_f30k.toml", ["schedule.lr_decay_epochs=[15, 25]"])
    assert [two.lr_at(e) for e in (14, 15, 25)] == pytest.approx([2e-4, 2e-5, 2e-6])


def test_overrides_are_typed() -> None:
    cfg = load_config(CONFIGS / "sgr_f30k.toml", ["optim.lr=3e-4", "optim.grad_clip=1", "loss.hardest_negative=false",
                                                 "model.name=saf", "model.args.sim_dim=64", "run.precision=bf16",
                                                 "data.batch_size = 64"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.grad_clip, float) and cfg.optim.grad_clip == 1.0
    assert cfg.loss.hardest_negative is False and cfg.model.name == "saf" and cfg.model.args["sim_dim"] == 64
    assert cfg.run.precision == "bf16" and cfg.data.batch_size == 64


def test_dumps_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "saf_f30k_short.toml", ["model.args.name_with_quote=\"a \\\"b\\\"\"",
                                                       "schedule.lr_decay_epochs=[3, 7]", "optim.lr=1e-05"])
    (tmp_path / "c.toml").write_text(dumps(cfg))
    again = load_config(tmp_path / "c.toml")
    assert again == cfg and changed_keys(cfg, again) == []


def test_changed_keys() -> None:
    a = load_config(CONFIGS / "sgr_f30k.toml")
    b = load_config(CONFIGS / "sgr_f30k.toml", ["optim.lr=1e-3", "model.args.dropout=0.1"])
    assert changed_keys(a, b) == ["model.args", "optim.lr"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("lr = 0.0002", "lrr = 0.0002"), r"unknown key\(s\) optim\.lrr in \[optim\].*keys are"),
    (lambda t: t.replace("grad_clip = 2.0\n", ""), r"missing key\(s\) optim\.grad_clip"),
    (lambda t: t + "\n[extra]\nx = 1\n", r"unknown key\(s\) extra in \[the top level\]"),
    (lambda t: t.replace("[loss]", "[losses]"), r"unknown key\(s\) losses"),
    (lambda t: t.replace("batch_size = 128", "batch_size = 12.5"), r"data\.batch_size = 12\.5: expected int"),
    (lambda t: t.replace("hardest_negative = true", 'hardest_negative = "yes"'), "expected bool"),
    (lambda t: t.replace("batch_size = 128", "batch_size = 1"), r"data\.batch_size = 1: must be >= 2"),
    (lambda t: t.replace('precision = "fp32"', 'precision = "fp16"'), "run.precision = 'fp16': must be one of"),
    (lambda t: t.replace("lr_decay_epochs = [30]", "lr_decay_epochs = [30, 10]"), "increasing epochs"),
    (lambda t: t.replace("[model]", "[model"), "not valid TOML"),
])
def test_bad_recipes_are_errors_naming_the_key(tmp_path: Path, edit, message: str) -> None:
    path = write(tmp_path, edit((CONFIGS / "sgr_f30k.toml").read_text()))
    with pytest.raises(ItmatchError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) or "must be" in str(info.value)


@pytest.mark.parametrize("item, message", [
    ("optim.lrr=1", r"--set optim\.lrr: unknown config key; use model\.args\.NAME or one of: .*optim\.lr"),
    ("lr=1", "--set lr: unknown config key"),
    ("model.args=1", "--set model.args: unknown config key"),
    ("optim.lr", "expected KEY=VALUE"),
    ("optim.lr=fast", r"--set optim\.lr = 'fast': expected float"),
    ("schedule.epochs=0", r"schedule\.epochs = 0: must be >= 1"),
])
def test_bad_overrides(item: str, message: str) -> None:
    with pytest.raises(ItmatchError, match=message):
        load_config(CONFIGS / "sgr_f30k.toml", [item])


def test_missing_file_and_section_type(tmp_path: Path) -> None:
    with pytest.raises(ItmatchError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    raw = {"model": 3, "optim": {}, "schedule": {}, "loss": {}, "data": {}, "run": {}}
    with pytest.raises(ItmatchError, match=r"x\.toml: \[model\] must be a table"):
        config_from_dict(raw, "x.toml")


def test_command_line_values_read_as_toml_then_as_python_numbers_then_as_text():
    from itmatch.fields import parse_value

    assert [parse_value(t) for t in ("3", "0.5", ".5", "1e-3", "true", "[30, 40]", '"x"', "null", "none", "a-b")] \
        == [3, 0.5, 0.5, 0.001, True, [30, 40], "x", None, "none", "a-b"]
