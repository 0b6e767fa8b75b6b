"""`itmatch evaluate` / `convert` end to end on generated precomp data, and their one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import SMALL, small_model
from reference_sgraf import reference_scores

from itmatch.checkpoint import save_model
from itmatch.cli import main
from itmatch.data.precomp import load_split
from itmatch.data.synthetic import write_synthetic
from itmatch.data.vocab import load_vocab
from itmatch.metrics import retrieval_metrics


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Generated precomp data (small feature width), its vocabulary, and SGR/SAF model files using it."""
    root = tmp_path_factory.mktemp("synth")
    data = write_synthetic(root / "data", n_images={"train": 4, "dev": 6, "test": 12}, feature_dim=SMALL["img_dim"])
    vocab = load_vocab(data / "vocab.json")
    files = {}
    for seed, name in enumerate(("sgr", "saf")):
        model = small_model(name, seed=seed, vocab_size=len(vocab))
        files[name] = root / f"{name}.safetensors"
        save_model(files[name], model, vocab=vocab.to_json())
        files[f"{name}_model"] = model
    return data, vocab, files


def reference_matrix(model, data, vocab):
    split = load_split(data, "test")
    feats = torch.from_numpy(split.image_features(np.arange(split.n_images)))
    return reference_scores(model, feats, vocab.encode_all(split.captions)).numpy(), split


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_model_matches_reference_metrics(dataset, tmp_path, capsys):
    data, vocab, files = dataset
    out = tmp_path / "sgr.json"
    code, stdout, _ = run(["evaluate", "--data", data, "--checkpoint", files["sgr"], "--output", out,
                           "--save-sims", tmp_path / "sgr.npy", "--no-progress"], capsys)
    assert code == 0
    expected, split = reference_matrix(files["sgr_model"], data, vocab)
    np.testing.assert_allclose(np.load(tmp_path / "sgr.npy"), expected, atol=1e-5, rtol=0)
    result = json.loads(out.read_text())
    want = retrieval_metrics(expected, split.caption_image)
    assert result["protocol"] == "full" and result["n_images"] == 12 and result["n_captions"] == 60
    assert result["rsum"] == pytest.approx(want["rsum"]) and result["i2t"] == pytest.approx(want["i2t"])
    assert "rsum" in stdout and "text->image" in stdout


def test_ensemble_equals_averaged_saved_matrices(dataset, tmp_path, capsys):
    data, _, files = dataset
    for name in ("sgr", "saf"):
        assert run(["evaluate", "--data", data, "--checkpoint", files[name], "--save-sims", tmp_path / f"{name}.npy",
                    "--output", tmp_path / f"{name}.json", "--no-progress"], capsys)[0] == 0
    assert run(["evaluate", "--data", data, "--checkpoint", files["sgr"], "--checkpoint", files["saf"],
                "--output", tmp_path / "ens.json", "--save-sims", tmp_path / "ens.npy", "--no-progress"], capsys)[0] == 0
    assert run(["evaluate", "--data", data, "--sims", tmp_path / "sgr.npy", "--sims", tmp_path / "saf.npy",
                "--output", tmp_path / "avg.json"], capsys)[0] == 0
    mean = (np.load(tmp_path / "sgr.npy") + np.load(tmp_path / "saf.npy")) / 2
    np.testing.assert_allclose(np.load(tmp_path / "ens.npy"), mean, atol=1e-6, rtol=0)
    ens, avg = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ens", "avg"))
    assert ens["rsum"] == pytest.approx(avg["rsum"]) and ens["t2i"] == pytest.approx(avg["t2i"])


def test_repeated_image_layout_gives_the_same_result(tmp_path, capsys):
    plain = write_synthetic(tmp_path / "plain", n_images=5, feature_dim=SMALL["img_dim"], seed=3)
    repeated = write_synthetic(tmp_path / "rep", n_images=5, feature_dim=SMALL["img_dim"], seed=3, repeat_images=True)
    assert np.load(repeated / "test_ims.npy", mmap_mode="r").shape[0] == 25
    assert (plain / "vocab.json").read_bytes() == (repeated / "vocab.json").read_bytes()
    vocab = load_vocab(plain / "vocab.json")
    model_file = tmp_path / "saf.safetensors"
    save_model(model_file, small_model("saf", seed=4, vocab_size=len(vocab)), vocab=vocab.to_json())
    for data, name in ((plain, "plain.npy"), (repeated, "rep.npy")):
        assert run(["evaluate", "--data", data, "--checkpoint", model_file, "--save-sims", tmp_path / name,
                    "--output", tmp_path / "r.json", "--no-progress"], capsys)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "rep.npy"))


def test_convert_release_then_evaluate(dataset, tmp_path, capsys):
    from test_checkpoint import write_official

    data, vocab, files = dataset
    release = tmp_path / "model_best.pth.tar"
    model = small_model("sgr", seed=0, vocab_size=len(vocab))
    write_official(release, model, "SGR")
    native = tmp_path / "sgr.safetensors"
    code, stdout, _ = run(["convert", release, native, "--vocab", data / "vocab.json"], capsys)
    assert code == 0 and "official" in stdout
    for ckpt, extra in ((release, ["--vocab", data / "vocab.json"]), (native, [])):
        assert run(["evaluate", "--data", data, "--checkpoint", ckpt, "--save-sims", tmp_path / "x.npy",
                    "--output", tmp_path / "x.json", "--no-progress", *extra], capsys)[0] == 0
        np.testing.assert_allclose(np.load(tmp_path / "x.npy"), reference_matrix(model, data, vocab)[0], atol=1e-5)


def bad_case(kind, data, tmp_path, files):
    """Break one thing; return (extra args, a fragment the error line must contain)."""
    args = ["--checkpoint", files["sgr"]]
    if kind == "features_rank":
        np.save(data / "test_ims.npy", np.zeros((12, 24), dtype=np.float32))
        return args, "test_ims.npy"
    if kind == "features_width":
        np.save(data / "test_ims.npy", np.zeros((12, 36, 7), dtype=np.float32))
        return args, "(N, 36, 24)"
    if kind == "caption_count":
        lines = (data / "test_caps.txt").read_text().splitlines()
        (data / "test_caps.txt").write_text("\n".join(lines[:-3]) + "\n")
        return args, "test_caps.txt"
    if kind == "empty_caption":
        lines = (data / "test_caps.txt").read_text().splitlines()
        lines[7] = "   "
        (data / "test_caps.txt").write_text("\n".join(lines) + "\n")
        return args, "test_caps.txt:8"
    if kind == "vocab_size":
        bigger = load_vocab(data / "vocab.json")
        bigger.add_word("zyzzyva")
        from itmatch.data.vocab import save_vocab
        save_vocab(bigger, tmp_path / "big.json")
        return args + ["--vocab", tmp_path / "big.json"], "use the vocabulary the model was trained with"
    if kind == "not_checkpoint":
        (tmp_path / "junk.pth").write_bytes(b"\x00\x01 definitely not a model")
        return ["--checkpoint", tmp_path / "junk.pth"], "not a checkpoint"
    if kind == "protocol":
        return args + ["--protocol", "coco2k"], "unknown protocol"
    if kind == "protocol_size":
        return args + ["--protocol", "f30k"], "omit --protocol"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["features_rank", "features_width", "caption_count", "empty_caption", "vocab_size",
                                  "not_checkpoint", "protocol", "protocol_size"])
def test_bad_inputs_give_one_line_and_exit_2(dataset, tmp_path, capsys, kind):
    source, _, files = dataset
    data = tmp_path / "data"
    shutil.copytree(source, data)
    extra, fragment = bad_case(kind, data, tmp_path, files)
    out = tmp_path / "result.json"
    code, _, err = run(["evaluate", "--data", data, "--output", out, "--no-progress", *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err, err
    assert not out.exists()


def test_unknown_words_map_to_unk(dataset):
    _, vocab, _ = dataset
    assert vocab.encode("zyzzyva qwertyuiop") == [1, 3, 3, 2]


# -- --sims without --data ---------------------------------------------------------------------------------------

def test_sims_alone_in_the_authors_layout_equal_sims_with_data(dataset, tmp_path, capsys):
    """A 12 × 60 matrix is read as 5 captions per image: the same numbers as with the split's own layout."""
    data, vocab, files = dataset
    sims, split = reference_matrix(files["saf_model"], data, vocab)
    np.save(tmp_path / "saf.npy", sims)
    with_data, alone = tmp_path / "with.json", tmp_path / "alone.json"
    assert run(["evaluate", "--data", data, "--sims", tmp_path / "saf.npy", "--output", with_data], capsys)[0] == 0
    code, stdout, _ = run(["evaluate", "--sims", tmp_path / "saf.npy", "--output", alone], capsys)
    assert code == 0 and "protocol full (12 images, 60 captions)" in stdout
    expected = json.loads(with_data.read_text())
    expected.pop("split")
    assert json.loads(alone.read_text()) == expected
    assert expected["rsum"] == pytest.approx(retrieval_metrics(sims, split.caption_image)["rsum"])


def test_sims_alone_with_other_captions_per_image(tmp_path, capsys):
    """4 images × 8 captions, 2 per image: R@1 (i2t) = 50 (images 0 and 2 rank an own caption first) and R@1 (t2i)
    = 25 (captions 1 and 4 of 8 rank their image first; the all-zero columns are ties, not hits)."""
    sims = np.full((4, 8), 0.0, dtype=np.float32)
    sims[0, 1] = sims[2, 4] = 1.0                   # image 0 -> its caption 1; image 2 -> its caption 4
    sims[1, 0] = sims[3, 2] = 2.0                   # images 1 and 3 prefer other images' captions
    sims[1, 5] = 3.0                                # caption 5 (image 2's) prefers image 1
    np.save(tmp_path / "m.npy", sims)
    out = tmp_path / "r.json"
    code, _, err = run(["evaluate", "--sims", tmp_path / "m.npy", "--output", out], capsys)
    assert code == 2 and "is not 5 captions per image" in err and "--captions-per-image" in err
    assert run(["evaluate", "--sims", tmp_path / "m.npy", "--captions-per-image", 2, "--output", out], capsys)[0] == 0
    result = json.loads(out.read_text())
    want = retrieval_metrics(sims, np.arange(8) // 2)
    assert result["n_images"] == 4 and result["n_captions"] == 8
    assert (result["i2t"]["r1"], result["t2i"]["r1"]) == (50.0, 25.0)
    assert result["i2t"] == want["i2t"] and result["t2i"] == want["t2i"]


def test_sims_alone_refuses_what_it_cannot_read(dataset, tmp_path, capsys):
    data, _, files = dataset
    np.save(tmp_path / "v.npy", np.zeros(10, dtype=np.float32))
    cases = [(["--sims", tmp_path / "missing.npy"], "no such score matrix"),
             (["--sims", tmp_path / "v.npy"], "a score matrix is 2-D"),
             (["--checkpoint", files["sgr"]], "pass --data DIR"),
             (["--data", data, "--sims", tmp_path / "v.npy", "--captions-per-image", 2], "without --data")]
    for args, fragment in cases:
        code, _, err = run(["evaluate", *args], capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
