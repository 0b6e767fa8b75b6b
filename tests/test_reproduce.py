"""The published tables as data (transcription checks, every run's recipe builds its model) and `itmatch
reproduce`: --dry-run lists exactly the table's rows, a tiny run on synthetic data writes a well-formed table,
--rows-from rebuilds it from finished runs without training."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib

import pytest
from test_vse import single_thread  # noqa: F401 (an autouse fixture: one thread for tiny models)
from train_support import FEATURE_DIM, SMALL

from itmatch.cli import main
from itmatch.data.synthetic import write_synthetic
from itmatch.errors import ItmatchError
from itmatch.models import create_model
from itmatch.papers import list_papers, load_paper
from itmatch.papers.plan import recipe, scaled
from itmatch.papers.tables import FOLDER, measured_value

PAPERS = ["hrem", "sgraf", "sgraf_reproduction", "tshsr"]
TINY = [*SMALL, "data.batch_size=16"]


def test_every_paper_loads():
    assert list_papers() == PAPERS
    for name in PAPERS:
        paper = load_paper(name)
        assert paper.tables and all(t.rows for t in paper.tables)
        used = {run for t in paper.tables for run in t.run_ids()}
        assert used == set(paper.runs), name  # no run is defined and left unused


def test_numbers_as_printed():
    """Spot checks against the seed papers' text, one row of each kind."""
    row = load_paper("sgraf").table("3").rows[0]
    assert row.published == {"i2t_r1": 62.4, "i2t_r10": 92.6, "t2i_r1": 46.0, "t2i_r10": 83.1}
    assert row.runs == ("sgr_f30k_no_reasoning",)
    bfan = load_paper("sgraf").table("1").rows[6]
    assert bfan.method == "BFAN" and bfan.published["i2t_r10"] is None and bfan.published["i2t_r5"] == 95.2
    split = load_paper("sgraf").table("5").rows[7]
    assert (split.dataset, split.runs, split.published["t2i_r10"]) == ("f30k", ("saf_f30k", "sgr_f30k"), 88.8)
    assert load_paper("tshsr").table("4").rows[2].published == {"i2t_r1": 78.3, "i2t_r10": 98.3, "t2i_r1": 62.8,
                                                                  "t2i_r10": 95.5}
    assert load_paper("hrem").table("3b").rows[1].published == {"i2t_r1": 81.7, "i2t_r5": 95.3, "t2i_r1": 61.9,
                                                                  "t2i_r5": 86.5}
    assert load_paper("sgraf_reproduction").table("2").rows[1].published["t2i_r1"] == 54.4


def test_printed_sums_equal_the_sum_of_their_recalls():
    """rsum / Sum columns are printed separately from the recalls: they must agree (up to rounding)."""
    checked = 0
    for name in PAPERS:
        for table in load_paper(name).tables:
            total = next((c for c in ("rsum", "sum") if c in table.columns), None)
            if total is None:
                continue
            for row in table.rows:
                recalls = [v for c, v in row.published.items() if c != total]
                assert abs(sum(recalls) - row.published[total]) <= 0.11, (name, table.id, row.method)
                checked += 1
    assert checked == 24 + 18 + 6


@pytest.mark.parametrize("name", PAPERS)
def test_every_run_recipe_builds_its_model(name):
    raw = tomllib.loads((FOLDER / f"{name}.toml").read_text(encoding="utf-8"))["runs"]
    for run_id, spec in load_paper(name).runs.items():
        config = recipe(spec.recipe, spec.overrides)
        args = {k: v for k, v in config.model.args.items() if k != "text_encoder_path"}
        if args.get("text_encoder") == "bert":
            args["text_encoder"] = "bigru"  # no BERT weights here; the switches are what is checked
            args.pop("text_lr_factor", None)
        small = {"embed_size": 32, "word_dim": 12, "img_dim": 24, "vocab_size": 50}
        if config.model.name == "hrem":
            small |= {"relation_heads": 4, "instance_heads": 4}
        else:
            small["sim_dim"] = 16
        model = create_model(config.model.name, **{**args, **small})
        for item in raw[run_id].get("set", []):  # every model switch of the run reaches its model
            key, value = item.split("=", 1)
            if key == "model.name":
                assert model.model_name == value, run_id
            elif key.startswith("model.args."):
                name = key.removeprefix("model.args.")  # a size is made small here: the recipe must carry it
                built = config.model.args[name] if name in small else getattr(model.config, name)
                assert built == override_value(value), (run_id, item)


def override_value(text: str) -> object:
    """A ``--set`` value as the recipe reads it: a TOML value, else the bare word as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def test_scaled_recipe():
    config = recipe("hrem_bigru_f30k", [])
    quick = scaled(config, 0.1)
    assert (quick.schedule.epochs, quick.schedule.lr_decay_epochs) == (3, [2])
    assert quick.model.args["instance_warmup"] == 800
    del config.model.args["instance_warmup"]  # a recipe that keeps the model's default warm-up (8,000 iterations)
    assert scaled(config, 0.1).model.args["instance_warmup"] == 800
    assert "instance_warmup" not in scaled(recipe("sgr_f30k", []), 0.1).model.args  # SGR counts no iterations
    assert scaled(recipe("sgr_f30k", []), 0.02).schedule.lr_decay_epochs == []  # 1 epoch: no decay left
    with pytest.raises(ItmatchError, match="epochs-scale"):
        scaled(config, 0)


def printed_rows(capsys, *args: str) -> list[str]:
    assert main(["reproduce", *args]) == 0
    return [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  row ")]


@pytest.mark.parametrize("name", PAPERS)
def test_dry_run_lists_exactly_the_rows_of_the_published_table(name, capsys):
    raw = tomllib.loads((FOLDER / f"{name}.toml").read_text(encoding="utf-8"))
    for table in raw["tables"]:
        rows = printed_rows(capsys, "--paper", name, "--table", str(table["id"]), "--dry-run")
        assert len(rows) == len(table["rows"])
        for printed, row in zip(rows, table["rows"]):
            method = printed.split(" | ")[0]
            assert method == (f"[{row['group']}] " if "group" in row else "") + row["method"]
            how = printed.split(" | ")[2]
            if "checkpoint" in row:
                assert how == f"released checkpoint {row['checkpoint']} (give --checkpoint {row['checkpoint']}=PATH)"
            else:
                assert how == (" + ".join(row["runs"]) if "runs" in row else "published only")


def test_dry_run_estimates_and_errors(capsys):
    assert main(["reproduce", "--paper", "sgraf", "--table", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.startswith("  ") and "GPU-h" in line]
    assert [line.split(":")[0].strip() for line in runs] == ["saf_coco", "sgr_coco", "joint_coco", "saf_f30k",
                                                             "sgr_f30k", "joint_f30k"]
    hours = {line.split(":")[0].strip(): float(line.rsplit("~", 1)[1].split()[0]) for line in runs}
    assert hours["sgr_coco"] > hours["sgr_f30k"] > hours["saf_f30k"] > 0  # COCO is 4× larger; SAF is cheaper
    assert "total: ~" in out and "DATA/coco_precomp" in out
    assert main(["reproduce", "--paper", "sgraf", "--table", "6", "--dry-run"]) == 2
    assert "its tables are: 1, 2, 3, 4, 5, 7" in capsys.readouterr().err


def test_the_flop_count_reads_the_resolved_config():
    from itmatch.papers.cost import encode_mflop, pair_mflop

    # a preset is counted as its base model with the preset's fields (not as another model)
    assert pair_mflop("tshsr_i2t", {}) == pair_mflop("tshsr", {"streams": "i2t"}) < pair_mflop("tshsr", {})
    assert pair_mflop("tshsr_t2i", {}) == pair_mflop("tshsr", {"streams": "t2i", "t2i_hsr": True})
    # the resolved sizes reach the count (the counts themselves: tests/test_flops.py)
    assert pair_mflop("sgr", {"sim_dim": 128}) < pair_mflop("sgr", {}) < pair_mflop("sgr", {"sim_dim": 384})
    assert pair_mflop("hrem", {}) == pair_mflop("vse", {}) == 0.0
    assert encode_mflop("hrem", {"text_encoder": "bert"}) > encode_mflop("vse", {"text_encoder": "bert"}) \
        > encode_mflop("vse", {})
    assert main(["reproduce", "--paper", "clip", "--table", "1"]) == 2
    assert main(["reproduce", "--paper", "sgraf", "--table", "3"]) == 2  # no --out


def test_tiny_run_writes_the_table_and_rows_from_rebuilds_it(tmp_path, capsys):
    from itmatch.evaluate import evaluate_split

    data = tmp_path / "data"
    write_synthetic(data / "f30k_precomp", n_images={"train": 32, "dev": 8, "test": 10}, feature_dim=FEATURE_DIM)
    out = tmp_path / "run"
    args = ["reproduce", "--paper", "sgraf", "--table", "5", "--data", str(data), "--out", str(out),
            "--device", "cpu", "--epochs-scale", "0.025", "--whole-split", "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "3 of 8 reproducible rows measured" not in said and "4 of 8 reproducible rows measured" in said
    doc = json.loads((out / "table-5.json").read_text())
    assert doc["paper"] == "sgraf" and doc["table"] == "5" and doc["columns"] == ["i2t_r1", "i2t_r10", "t2i_r1",
                                                                                   "t2i_r10"]
    assert "SCALED" in doc["recipe"] and "epochs × 0.025" in doc["recipe"]
    assert [r["status"] for r in doc["rows"]] == ["not run"] * 4 + ["measured"] * 4  # no coco_precomp here
    for row in doc["rows"][4:]:
        assert set(row["measured"]) == set(doc["columns"]) and row["protocol"] == "full"
        for column in doc["columns"]:
            assert 0 <= row["measured"][column] <= 100
            assert row["difference"][column] == pytest.approx(row["measured"][column] - row["published"][column],
                                                              abs=0.011)
        assert "schedule.epochs" in row["recipe_changes"] and "model.args" in row["recipe_changes"]
        # each row is its runs' checkpoints evaluated together (an ensemble when several), as itmatch evaluate does
        want = evaluate_split(data / "f30k_precomp", "test", checkpoints=[out / "runs" / r / "best.pt"
                                                                          for r in row["runs"]], progress=False)
        assert row["measured"] == {c: round(measured_value(c, want, tuple(doc["columns"])), 2)
                                   for c in doc["columns"]}, row["method"]
        kept = json.loads((out / "results" / f"{'+'.join(row['runs'])}.full.json").read_text())
        for direction in ("i2t", "t2i"):
            assert kept[direction] == pytest.approx(want[direction]), (row["method"], direction)
        assert kept["rsum"] == pytest.approx(want["rsum"]), row["method"]
    assert [r["runs"] for r in doc["rows"][4:]] == [["saf_f30k"], ["sgr_f30k"], ["joint_f30k"],
                                                    ["saf_f30k", "sgr_f30k"]]
    split = json.loads((out / "results" / "saf_f30k+sgr_f30k.full.json").read_text())
    assert split["n_images"] == 10 and split["n_captions"] == 50
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["joint_f30k", "saf_f30k", "sgr_f30k"]
    assert json.loads((out / "runs" / "joint_f30k" / "log.jsonl").read_text().splitlines()[0])["epoch"] == 0
    md = (out / "table-5.md").read_text()
    assert "| Method | Data | Protocol | i2t R@1 | i2t R@10 | t2i R@1 | t2i R@10 | Runs |" in md
    published, measured = 77.8, doc["rows"][7]["measured"]["i2t_r1"]
    assert f"| SAF+SGR split | f30k | full | {published:.1f} / {measured:.1f} ({measured - published:+.1f}) |" in md
    assert "| SAF | coco | full | 76.1 / – |" in md and "(not run)" in md

    # resumable per row: a second call trains and evaluates nothing (the results are kept)
    stamp = (out / "runs" / "sgr_f30k" / "best.pt").stat().st_mtime_ns
    (out / "results" / "saf_f30k+sgr_f30k.full.json").unlink()
    assert main(args) == 0
    assert (out / "runs" / "sgr_f30k" / "best.pt").stat().st_mtime_ns == stamp
    again = json.loads((out / "table-5.json").read_text())
    assert again["rows"] == doc["rows"]

    # the same --out with other settings: refused before any training, nothing reported under the new labels
    table = {p.name: p.read_bytes() for p in out.glob("table-5.*")}
    capsys.readouterr()
    assert main([*args, "--set", "model.args.sim_dim=12"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'runs' / 'saf_f30k'}: holds a run of other settings (model.args); give reproduce another " \
           "--out" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.glob("table-5.*")} == table
    # a run's best.pt replaced (trained on, or again): its rows are evaluated again, not taken from the kept results
    best = out / "runs" / "sgr_f30k" / "best.pt"
    shutil.copy(out / "runs" / "sgr_f30k" / "last.pt", best)  # other bytes: a training checkpoint of the same run
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "evaluating sgr_f30k on" in said and "evaluating saf_f30k on" not in said and "training" not in said
    made = json.loads((out / "results" / "sgr_f30k.full.json").read_text())["made_from"]["sgr_f30k"]
    assert made["best"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert "epochs" not in made["config"]["schedule"] and made["config"]["model"]["name"] == "sgr"  # resumable: out
    doc = json.loads((out / "table-5.json").read_text())
    # a run folder removed to free space: its rows keep their results, nothing is trained again
    shutil.move(out / "runs" / "saf_f30k", tmp_path / "saf_f30k")
    assert main(args) == 0
    assert "training" not in capsys.readouterr().out
    assert json.loads((out / "table-5.json").read_text())["rows"] == doc["rows"]
    shutil.move(tmp_path / "saf_f30k", out / "runs" / "saf_f30k")

    # --rows-from: the table from finished runs, without --data and without training
    rebuilt = tmp_path / "rebuilt"
    assert main(["reproduce", "--paper", "sgraf", "--table", "5", "--rows-from", str(out), "--out", str(rebuilt),
                 "--whole-split"]) == 0
    from_rows = json.loads((rebuilt / "table-5.json").read_text())
    assert [r["measured"] for r in from_rows["rows"]] == [r["measured"] for r in doc["rows"]]
    assert from_rows["recipe"].endswith("not a reproduction")  # the runs' scaled recipes are said row by row:
    assert all("schedule.epochs" in r["recipe_changes"] for r in from_rows["rows"][4:])
    assert not (rebuilt / "runs").exists()

    # another table from the same runs, its report written into their run directory: table 5's is kept
    five = {p.name: p.read_bytes() for p in out.glob("table-5.*")}
    assert main(["reproduce", "--paper", "sgraf", "--table", "3", "--rows-from", str(out), "--whole-split"]) == 0
    assert json.loads((out / "table-3.json").read_text())["table"] == "3"
    assert {p.name: p.read_bytes() for p in out.glob("table-5.*")} == five and len(five) == 2
    # a file of the user's under a report's name is never overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table-5.md").write_text("my notes")
    capsys.readouterr()
    assert main(["reproduce", "--paper", "sgraf", "--table", "5", "--rows-from", str(out), "--out", str(mine),
                 "--whole-split"]) == 2
    assert "table-5.md: exists and is not itmatch's report of sgraf table 5" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["table-5.md"] and (mine / "table-5.md").read_text() == "my notes"

    # another --epochs-scale: a plan of more epochs trains the runs on and evaluates them again (the kept results
    # were of fewer epochs), so the label holds; a plan of fewer epochs than the runs had is refused
    def epochs(run: str) -> int:
        return len((out / "runs" / run / "log.jsonl").read_text().splitlines())

    before = {run: epochs(run) for run in ("saf_f30k", "sgr_f30k", "joint_f30k")}
    longer = [*(item if item != "0.025" else "0.06" for item in args), "--set", "schedule.lr_decay_epochs=[]"]
    assert main(longer) == 0
    doc = json.loads((out / "table-5.json").read_text())
    assert "epochs × 0.06" in doc["recipe"] and all(epochs(run) > before[run] for run in before)
    for row in doc["rows"][4:]:
        want = evaluate_split(data / "f30k_precomp", "test", checkpoints=[out / "runs" / r / "best.pt"
                                                                          for r in row["runs"]], progress=False)
        assert row["measured"] == {c: round(measured_value(c, want, tuple(doc["columns"])), 2)
                                   for c in doc["columns"]}, row["method"]
    capsys.readouterr()
    assert main(args) == 2
    assert "holds a run trained for 2 epochs, more than the 1 this plan trains (another --epochs-scale?)" in \
        capsys.readouterr().err


def test_released_checkpoint_rows_are_evaluated_without_training(tmp_path, capsys):
    """Seed 000's "Pre" rows: --checkpoint NAME=PATH evaluates a file in the authors' release layout; with
    --rows-from nothing is trained, the "Full" rows stay "not run", and the numbers are itmatch evaluate's."""
    from conftest import small_model
    from test_release import save_parts, split_parts

    from itmatch.data.vocab import load_vocab
    from itmatch.evaluate import evaluate_split

    data = tmp_path / "data"
    folder = write_synthetic(data / "f30k_precomp", n_images={"train": 8, "dev": 4, "test": 10},
                             feature_dim=FEATURE_DIM)
    size = len(load_vocab(folder / "vocab.json").word2idx)
    releases = {}
    for seed, module in enumerate(("SGR", "SAF")):
        releases[module] = tmp_path / module / "model_best.pth.tar"
        releases[module].parent.mkdir()
        model = small_model(module.lower(), seed=seed, img_dim=FEATURE_DIM, vocab_size=size)
        save_parts(releases[module], split_parts(model), module_name=module)
    out = tmp_path / "seed000"
    args = ["reproduce", "--paper", "sgraf_reproduction", "--table", "1", "--data", str(data), "--rows-from",
            str(out), "--whole-split", "--no-progress", "--checkpoint", f"SAF={releases['SAF']}",
            "--checkpoint", f"SGR={releases['SGR']}"]
    assert main(args) == 0
    assert "2 of 4 reproducible rows measured" in capsys.readouterr().out
    doc = json.loads((out / "table-1.json").read_text())
    assert [(r["method"], r["status"], r["checkpoint"]) for r in doc["rows"]] == [
        ("(Full)SAF", "not run", ""), ("(Pre)SAF", "measured", "SAF"), ("(Full)SGR", "not run", ""),
        ("(Pre)SGR", "measured", "SGR")]
    assert not (out / "runs").exists()
    for row in (doc["rows"][1], doc["rows"][3]):
        want = evaluate_split(folder, "test", checkpoints=[releases[row["checkpoint"]]], vocab=folder / "vocab.json",
                              progress=False)
        assert row["measured"] == {c: round(measured_value(c, want, tuple(doc["columns"])), 2)
                                   for c in doc["columns"]}
    assert "| (Pre)SGR | f30k | full |" in (out / "table-1.md").read_text()
    stamp = (out / "results" / "checkpoint-SAF.full.json").stat().st_mtime_ns
    assert main(args) == 0  # kept: the same file is not evaluated again
    assert (out / "results" / "checkpoint-SAF.full.json").stat().st_mtime_ns == stamp
    assert main([*args[:-4], "--checkpoint", "SAF"]) == 2
    assert "write NAME=PATH" in capsys.readouterr().err
    assert main([*args[:-4], "--checkpoint", "MV=x.pth.tar"]) == 2
    assert "table 1 evaluates the released checkpoints SAF, SGR" in capsys.readouterr().err


def test_inputs_that_would_fail_or_be_ignored_after_training_are_refused_first(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic(data / "f30k_precomp", n_images={"train": 8, "dev": 4, "test": 10}, feature_dim=FEATURE_DIM)
    out = tmp_path / "out"
    base = ["reproduce", "--paper", "sgraf_reproduction", "--table", "1", "--out", str(out), "--no-progress"]
    cases = [
        (["--data", str(data / "f30k_precomp")], "holds none of f30k_precomp/; give --data the folder that holds"),
        (["--data", str(data), "--vocab", str(data / "f30k_precomp" / "vocab.json")],
         "give the folder holding f30k_precomp_vocab.json"),
        (["--data", str(data), "--vocab", str(tmp_path)], "give the folder holding f30k_precomp_vocab.json"),
        (["--data", str(data), "--checkpoint", f"SAF={tmp_path / 'missing.pth.tar'}"],
         "--checkpoint SAF=" + str(tmp_path / "missing.pth.tar") + ": no such model file"),
        (["--data", str(data), "--epochs-scale", "nan"], "--epochs-scale must be a number > 0, got nan"),
    ]
    for extra, expected in cases:
        assert main([*base, *extra]) == 2
        assert expected in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


def test_assumed_decay_epochs_are_printed_in_the_table(tmp_path):
    from itmatch.papers.plan import plan_table
    from itmatch.papers.report import table_doc, table_markdown

    paper = load_paper("sgraf_reproduction")
    plan = plan_table(paper, paper.table("2"), tmp_path)
    assert [recipe(paper.runs[r].recipe, ()).schedule.lr_decay_epochs for r in ("saf_f30k_short", "sgr_f30k_short")
            ] == [[10], [20]]
    md = table_markdown(table_doc(plan, [None, None, None]))
    assert "ASSUMPTION (saf_f30k_short: lr decay (x0.2) at epoch 10 of 20" in md
    assert "ASSUMPTION (sgr_f30k_short: lr decay (x0.2) at epoch 20 of 40" in md
    sgr = recipe("sgr_f30k_short", ())
    assert (sgr.optim.lr, sgr.schedule.lr_decay, sgr.schedule.epochs) == (0.0003, 0.2, 40)


def test_tshsr_rows_are_labelled_with_their_reading(tmp_path):
    """Every measured TSHSR row says which reading of the paper it was trained with (docs/models.md,
    "Departures"); the declared defaults are the model's, and --set changes the label."""
    import dataclasses

    from itmatch.models.tshsr import TSHSRConfig
    from itmatch.papers.plan import plan_table
    from itmatch.papers.report import table_doc, table_markdown

    paper = load_paper("tshsr")
    defaults = {f.name: f.default for f in dataclasses.fields(TSHSRConfig)}
    assert paper.readings == {k: defaults[k] for k in ("readout", "relation_norm")}
    table = paper.table("1")
    fake = {"i2t": {"r1": 1.0, "r5": 2.0, "r10": 3.0}, "t2i": {"r1": 4.0, "r5": 5.0, "r10": 6.0}, "rsum": 21.0}
    results = [fake if row.runs else None for row in table.rows]
    for overrides, label in (((), "reading: readout=sigmoid, relation_norm=softmax"),
                             (("model.args.readout=inner",), "reading: readout=inner, relation_norm=softmax")):
        doc = table_doc(plan_table(paper, table, tmp_path, overrides=overrides), results)
        labelled = {row["method"] for row in doc["rows"] if row["reading"]}
        assert labelled == {"Ours (HSR)", "Ours (TSHSR)"}  # not the SGR rows, not published-only ones
        assert table_markdown(doc).count(label) == 4  # two rows on each dataset
