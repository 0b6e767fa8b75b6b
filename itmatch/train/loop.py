"""The training loop: epochs of batches, a validation on dev after each epoch, ``best``/``last`` checkpoints and
a JSON-lines log, resumable at any step with the same result.

A run directory holds ``config.toml`` (the resolved recipe), ``last.pt`` (everything needed to resume: model,
optimizer, position in the data order, best score so far, every random state; written every
``run.checkpoint_every`` steps and after each epoch), ``best.pt`` (the model with the best dev rsum) and
``log.jsonl`` (per epoch: mean loss, lr, seconds, dev metrics). All files are written atomically. Under
``torchrun`` only rank 0 writes; all ranks must see the run directory and the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from itmatch import distributed as processes
from itmatch.data.precomp import PrecompSplit, SplitFiles, load_split
from itmatch.data.vocab import Vocabulary, load_vocab
from itmatch.errors import ItmatchError
from itmatch.evaluate import score_blocks
from itmatch.fileio import check_writable, folder_lock, mark_folder, read_marker, remove_stale, write_text
from itmatch.loading import knows_a_word
from itmatch.models.base import Matcher
from itmatch.models.registry import create_model
from itmatch.protocols import evaluate_blocks, protocol_blocks
from itmatch.scoring import precision_context
from itmatch.train import distributed
from itmatch.train.config import RESUMABLE_CHANGES, TrainConfig, dumps, load_config, unresumable_changes
from itmatch.train.loader import Batch, TrainBatches
from itmatch.train.neighbours import image_clusters
from itmatch.train.objective import TrainingObjective
from itmatch.train.run_folder import CONFIG, LAST, LOG, RUN_FILES, RUN_FOLDER, RunFolder
from itmatch.train.state import capture_rng, load_training_checkpoint, restore_rng, save_checkpoint



@dataclasses.dataclass
class TrainResult:
    """Where a finished (or stopped) run stands."""

    out: Path
    steps: int
    epochs: int
    best_rsum: float | None
    best_epoch: int | None

    def summary(self) -> str:
        """One line: best dev rsum and where the files are."""
        run = RunFolder(self.out)
        best = (f"best dev rsum {self.best_rsum:.2f} (epoch {self.best_epoch}), {run.best}"
                if self.best_rsum is not None else "no dev evaluation yet (stopped before an epoch ended)")
        return f"trained {self.steps} steps, {self.epochs} epochs; {best}; resume from {run.last}; log {run.log}"


@dataclasses.dataclass
class Position:
    """How far training is: ``step_in_epoch`` batches of ``epoch`` done, ``step`` in all; the epoch's
    [sum, count] of the loss and of each part a model reports, and its seconds, for its log line; the best dev
    rsum so far."""

    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    loss_sums: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    best_rsum: float | None = None
    best_epoch: int | None = None


def build_model(config: TrainConfig, vocab_size: int) -> Matcher:
    """The recipe's model, initialised from ``run.seed``; a model that reads word ids gets the vocabulary's size."""
    args = dict(config.model.args)

    def create(**extra: Any) -> Matcher:
        torch.manual_seed(config.run.seed)
        try:
            return create_model(config.model.name, **args, **extra)
        except ItmatchError as exc:
            raise ItmatchError(f"config [model]: {exc}") from None

    model = create()
    size = model.vocab_size
    if size is not None and size != vocab_size:
        if "vocab_size" in args:
            raise ItmatchError(f"config model.args.vocab_size = {size}, but the vocabulary has {vocab_size} words; "
                               "drop the key to take the vocabulary's size")
        model = create(vocab_size=vocab_size)
    return model


def check_features(model: Matcher, split: PrecompSplit) -> None:
    """Encode the split's first picture before any work, so that features the recipe's sizes do not fit are
    refused at once, with the ``--set`` items that fit them (the first step would only say they differ)."""
    training = model.training
    try:
        with torch.no_grad():
            model.eval().encode_images(torch.from_numpy(split.image_features(np.zeros(1, dtype=np.int64))))
    except ItmatchError as exc:
        sizes = {"num_regions": split.n_regions, "img_dim": split.feature_dim}
        fix = " ".join(f"--set model.args.{k}={v}" for k, v in sizes.items() if k in model.model_args())
        raise ItmatchError(f"{SplitFiles.of(split.directory, split.split).images}: {exc}; fit the recipe to the "
                           f"features: {fix}") from None
    finally:
        model.train(training)


def make_optimizer(config: TrainConfig, model: Matcher) -> torch.optim.Optimizer:
    """Adam (the SGRAF authors') or AdamW over the model's ``parameter_groups(lr)`` (each group's ``lr_factor``
    scales the scheduled rate, e.g. BERT weights at 0.1×; by default one group of all parameters)."""
    kind = torch.optim.Adam if config.optim.name == "adam" else torch.optim.AdamW
    return kind(model.parameter_groups(config.optim.lr), lr=config.optim.lr, weight_decay=config.optim.weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> None:
    """The schedule's rate of ``epoch`` in every parameter group (times the group's ``lr_factor``, if any)."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(epoch) * group.get("lr_factor", 1.0)


def training_step(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, config: TrainConfig,
                  device: torch.device, step: int = 0, epoch: int = 0) -> dict[str, float]:
    """One optimisation step on ``batch``: loss of the global batch, backward, gradient clipping, update.

    ``objective`` is a ``TrainingObjective`` (possibly inside DDP); ``step``/``epoch`` (0-based) are passed to
    models whose loss changes during training. Returns the loss and its parts, {name: value}.
    """
    features = batch.features.to(device, non_blocking=True)
    tokens = batch.tokens.to(device, non_blocking=True)
    with precision_context(config.run.precision, device):
        loss, logs = objective(features, tokens, batch.lengths, batch.images.to(device), step, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.optim.grad_clip > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
    optimizer.step()
    return logs


def epoch_line(record: dict, epochs: int) -> str:
    """The one line printed after each epoch: mean loss, dev rsum, training seconds (``record``: a log entry)."""
    return (f"epoch {record['epoch']} of {epochs}: loss {record['loss']:.4f}, dev rsum {record['dev']['rsum']:.1f}, "
            f"{record['time']:.1f} s")


def validate(model: Matcher, vocab: Vocabulary, split: PrecompSplit, device: torch.device,
             precision: str) -> dict:
    """Dev metrics (rsum, R@K both ways) with the code of ``itmatch evaluate`` (whole split, one block)."""
    blocks = protocol_blocks(None, split.caption_image)
    sims = score_blocks(model, vocab, split, blocks, device=device, precision=precision)
    return evaluate_blocks(None, split.caption_image, sims)


def train(config: TrainConfig, *, data: str | Path, vocab: str | Path, out: str | Path, resume: bool = False,
          device: str | None = "auto", progress: bool = True) -> TrainResult:
    """Train ``config``'s model on the precomp folder ``data`` (``train`` split, validating on ``dev``).

    ``out`` is the run directory: a new one, or with ``resume`` one to continue from its ``last.pt`` (a run
    killed at any step continues to the same weights). Under ``torchrun`` every rank calls this.
    """
    info = processes.setup(device)
    try:
        with contextlib.ExitStack() as held:  # the run directory's lock, taken once it is written
            return _Trainer(config, Path(data), Path(vocab), Path(out), resume, info, progress, held).run()
    finally:
        info.close()


class _Trainer:
    """One run: set up from a fresh or resumed run directory, then ``run``."""

    def __init__(self, config: TrainConfig, data: Path, vocab: Path, out: Path, resume: bool,
                 info: processes.DistInfo, progress: bool, held: contextlib.ExitStack) -> None:
        self.config, self.out, self.info, self.show = config, out, info, progress and info.is_main
        self.run_folder = RunFolder(out)
        if out.exists() and not out.is_dir():
            raise ItmatchError(f"{out}: is a file, not a folder; give --out a new folder for the run")
        check_writable(self.run_folder.config, "--out")
        checkpoint = _open_run(out, config) if resume else _check_fresh(out)
        self._load_inputs(data, vocab)
        self.position = Position()
        self._digest: dict[str, str] | None = None
        self._start_model(checkpoint, vocab)
        self._build_training(data)
        if checkpoint is not None:
            self._restore(checkpoint)
        info.barrier()
        if info.is_main:
            self._claim_run_folder(resume, held)

    def _load_inputs(self, data: Path, vocab: Path) -> None:
        """The vocabulary, the train and dev splits and the model, checked against each other before any work."""
        config = self.config
        self.vocab = load_vocab(vocab)
        self.train_split = load_split(data, "train")
        if self.train_split.n_images < 2:
            raise ItmatchError(f"{SplitFiles.of(data, 'train').images}: the train split has "
                               f"{self.train_split.n_images} picture; training needs at least 2 (a caption's "
                               "negatives are the other pictures of its batch)")
        self.dev_split = _load_dev(data, config.data.dev_subset)
        self.model = build_model(config, len(self.vocab))
        check_features(self.model, self.train_split)
        if not knows_a_word(self.model, self.vocab, self.train_split.captions[:1000]):
            raise ItmatchError(f"{vocab}: holds none of the words of the training captions, which would all read as "
                               f"unknown; build the vocabulary from them: itmatch data vocab --captions "
                               f"{SplitFiles.of(data, 'train').captions} --out VOCAB.json")

    def _start_model(self, checkpoint: dict | None, vocab: Path) -> None:
        """The model's starting weights (the run's, when resumed), synchronised across processes, on the device."""
        info = self.info
        if checkpoint is not None:
            self._check_same_run(checkpoint, vocab)
            self.model.load_state_dict(checkpoint["state_dict"])
        else:
            self.model.init_word_embeddings(self.vocab)  # e.g. GloVe vectors for a Bi-GRU's word table
            if info.rank:  # dropout draws differ between processes; rank 0 continues the seed's stream
                torch.manual_seed(int(np.random.SeedSequence([self.config.run.seed, info.rank]
                                                             ).generate_state(1)[0]))
        if info.world_size > 1:
            distributed.synchronize_batch_statistics(self.model, info.group)
        self.model.to(info.device).train()

    def _build_training(self, data: Path) -> None:
        """The optimizer, the objective (data-parallel across processes) and the batches."""
        config, info = self.config, self.info
        self.optimizer = make_optimizer(config, self.model)
        objective: torch.nn.Module = TrainingObjective(self.model, config.loss, info.group,
                                                       config.run.recompute_activations)
        if info.world_size > 1:
            objective = DistributedDataParallel(objective, device_ids=[info.device.index]
                                                if info.device.type == "cuda" else None,
                                                find_unused_parameters=True, broadcast_buffers=False)
        self.objective = objective
        token_ids = self.model.tokenize or self.vocab.encode_all
        clusters = None
        if config.data.neighbour_clusters:  # deterministic, so every rank and every resume gets the same ones
            clusters = image_clusters(self.train_split.features, config.data.neighbour_clusters,
                                      seed=config.run.seed)
        self.batches = TrainBatches(self.train_split, token_ids, config.data.batch_size, config.run.seed,
                                    info.rank, info.world_size, clusters)
        if len(self.batches) == 0:
            raise ItmatchError(f"{data}: the train split has {self.train_split.n_captions} captions, fewer than "
                               f"the {info.world_size} processes")

    def _claim_run_folder(self, resume: bool, held: contextlib.ExitStack) -> None:
        """The run folder taken (locked for this run, marked) and its start written: config.toml, an empty log."""
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        held.enter_context(folder_lock(out))  # no second run writes here while this one does
        if not resume:
            _check_fresh(out)  # another run may have begun here since the first check
        marker = read_marker(out)
        if marker is None or marker.get("format") == RUN_FOLDER.name:  # inside another itmatch folder: its own
            mark_folder(out, RUN_FOLDER, claim=RUN_FILES)  # its checkpoints are no other command's output
        write_text(self.run_folder.config, dumps(self.config))
        remove_stale(out)  # writes cut short by a kill (only itmatch's temporary names: never a user's file)
        self._write_log(None)

    def run(self) -> TrainResult:
        cfg, pos = self.config, self.position
        if pos.step == 0:  # a resumable state from the start: a kill after the first best.pt always has a last.pt
            self._save_last()
        while pos.epoch < cfg.schedule.epochs and not self._limit_reached():
            set_learning_rate(self.optimizer, cfg, pos.epoch)
            if not self._train_epoch():
                self._save_last()
                break
            self._end_epoch()
        return TrainResult(self.out, pos.step, pos.epoch, pos.best_rsum, pos.best_epoch)

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when ``run.max_steps`` stopped it before its end."""
        cfg, pos, n = self.config, self.position, len(self.batches)
        bar = tqdm(total=n, initial=pos.step_in_epoch, desc=f"epoch {pos.epoch}", unit="step",
                   disable=not self.show, dynamic_ncols=True)
        pairs, started = 0, time.perf_counter()
        with contextlib.closing(self.batches.epoch(pos.epoch, pos.step_in_epoch)) as batches, bar:
            for batch in batches:
                tick = time.perf_counter()
                logs = training_step(self.objective, self.optimizer, batch, cfg, self.info.device, pos.step,
                                     pos.epoch)
                pos.step, pos.step_in_epoch = pos.step + 1, pos.step_in_epoch + 1
                for name, value in logs.items():
                    total = pos.loss_sums.setdefault(name, [0.0, 0])
                    total[0], total[1] = total[0] + value, total[1] + 1
                pos.seconds += time.perf_counter() - tick
                pairs += len(batch.images)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", pairs_s=f"{pairs / (time.perf_counter() - started):.0f}")
                bar.update(1)
                if pos.step_in_epoch == n:
                    return True
                if self._limit_reached():
                    return False
                if pos.step % cfg.run.checkpoint_every == 0:
                    self._save_last()
        return True

    def _limit_reached(self) -> bool:
        return 0 < self.config.run.max_steps <= self.position.step

    def _end_epoch(self) -> None:
        """Validate (rank 0), keep ``best.pt``, log the epoch, save ``last.pt`` at the start of the next epoch."""
        pos = self.position
        record = None
        if self.info.is_main:
            dev = validate(self.model, self.vocab, self.dev_split, self.info.device, self.config.run.precision)
            losses = {name: total / count for name, (total, count) in pos.loss_sums.items()}
            record = {"epoch": pos.epoch, "step": pos.step, **losses, "lr": self.optimizer.param_groups[0]["lr"],
                      "time": pos.seconds, "dev": dev}
            if pos.best_rsum is None or dev["rsum"] > pos.best_rsum:
                pos.best_rsum, pos.best_epoch = dev["rsum"], pos.epoch
                save_checkpoint(self.run_folder.best, {**self._model_content(), "dev": dev})
        pos.epoch, pos.step_in_epoch, pos.loss_sums, pos.seconds = pos.epoch + 1, 0, {}, 0.0
        if record is not None:
            self._write_log(record)
            tqdm.write(epoch_line(record, self.config.schedule.epochs))
        self._save_last()

    def _model_content(self) -> dict[str, Any]:
        pos = self.position
        return {"model_name": self.model.model_name, "model_args": self.model.model_args(),
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "vocab": self.vocab.to_json(), "config": self.config.to_dict(), "epoch": pos.epoch,
                "step": pos.step, "best_rsum": pos.best_rsum, "best_epoch": pos.best_epoch}

    def _save_last(self) -> None:
        """Write ``last.pt`` (every rank sends its random states to rank 0)."""
        rng = self.info.all_gather_object(capture_rng())
        if not self.info.is_main:
            return
        pos = self.position
        save_checkpoint(self.run_folder.last, {
            **self._model_content(), "optimizer": self.optimizer.state_dict(), "step_in_epoch": pos.step_in_epoch,
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_stats": {"loss_sums": pos.loss_sums,
                                                                         "seconds": pos.seconds},
            "n_train_captions": self.train_split.n_captions, "data_digest": self._data_digest(),
            "world_size": self.info.world_size, "rng": rng})

    def _data_digest(self) -> dict[str, str]:
        """The fingerprints of the train and dev splits (``PrecompSplit.digest``), made once per run."""
        if self._digest is None:
            self._digest = {"train": self.train_split.digest(), "dev": self.dev_split.digest()}
        return self._digest

    def _write_log(self, record: dict | None) -> None:
        """Rewrite ``log.jsonl`` with the epochs before the current one, plus ``record``."""
        path = self.run_folder.log
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] < self.position.epoch]
        if record is not None:
            kept.append(json.dumps(record))
        write_text(path, "".join(line + "\n" for line in kept))

    def _check_same_run(self, checkpoint: dict, vocab: Path) -> None:
        if checkpoint.get("vocab") != self.vocab.to_json():
            raise ItmatchError(f"{vocab}: not the vocabulary this run was trained with (stored in "
                               f"{self.run_folder.last}); resume with the same --vocab")
        if checkpoint["n_train_captions"] != self.train_split.n_captions:
            raise ItmatchError(f"the train split has {self.train_split.n_captions} captions but the run was "
                               f"trained on {checkpoint['n_train_captions']}; resume with the same --data")
        stored = checkpoint.get("data_digest") or {}  # runs saved before fingerprints: the counts alone
        for split, digest in self._data_digest().items():
            if stored.get(split, digest) != digest:
                raise ItmatchError(f"the {split} split ({SplitFiles.of(self.train_split.directory, split).captions}"
                                   f" and its features) is not the one the run was trained on; resume with the same "
                                   "--data")
        if checkpoint["model_name"] != self.model.model_name:
            raise ItmatchError(f"{self.run_folder.last} holds a {checkpoint['model_name']}, not the config's "
                               f"{self.model.model_name}; resume with the run's config")
        changed = self.model.changed_args(checkpoint["model_args"])  # fields added since the run take defaults
        if changed:
            detail = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise ItmatchError(f"{self.run_folder.last} holds a {checkpoint['model_name']} with other model "
                               f"arguments than the config ({detail}); resume with the run's config")

    def _restore(self, checkpoint: dict) -> None:
        """Optimizer, position and random states of ``checkpoint`` (the model is already loaded)."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        stats = checkpoint["epoch_stats"]
        self.position = Position(checkpoint["epoch"], checkpoint["step"], checkpoint["step_in_epoch"],
                                 stats["loss_sums"], stats["seconds"], checkpoint["best_rsum"],
                                 checkpoint["best_epoch"])
        states = checkpoint["rng"]
        if len(states) == self.info.world_size:
            restore_rng(states[self.info.rank])
            return
        if self.info.is_main:
            print(f"note: the run used {len(states)} processes and resumes with {self.info.world_size}; "
                  "dropout draws differ from an uninterrupted run")
        torch.manual_seed(int(np.random.SeedSequence([self.config.run.seed, self.info.rank,
                                                      self.position.step]).generate_state(1)[0]))


def _check_fresh(out: Path) -> None:
    """Refuse an ``out`` holding a run, unless that run stopped before its first step ended (its config.toml, an
    empty log.jsonl and the step-0 last.pt, written at the start, are all it has: a new start replaces them and
    loses nothing)."""
    run = RunFolder(out)
    existing = run.existing()
    never_trained = existing in ([CONFIG, LOG], [CONFIG, LAST, LOG]) and not run.epochs_logged() and (
        LAST not in existing or _steps_saved(run.last) == 0)
    if existing and not never_trained:
        raise ItmatchError(f"{out}: holds another training run ({', '.join(existing)}); pass --resume to "
                           "continue it, or choose a new --out")


def _steps_saved(path: Path) -> int | None:
    """The steps a run had trained when it wrote the checkpoint ``path`` (None if it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # a torn or foreign file: not a run that never trained
        return None


def run_config_path(out: Path) -> Path:
    """The saved recipe of the run in ``out`` (what ``--resume`` reads, and trains on without ``--config``)."""
    path = RunFolder(out).config
    if not path.is_file():
        raise ItmatchError(f"{out}: no training run to resume (no {CONFIG}); drop --resume to start one")
    return path


def _open_run(out: Path, config: TrainConfig) -> dict | None:
    """The checkpoint to resume from (None when the run was killed before its first, and then nothing it wrote
    is lost by starting over), after checking that ``config`` is the run's own, up to ``RESUMABLE_CHANGES``."""
    saved_path = run_config_path(out)
    saved = load_config(saved_path)
    differ = unresumable_changes(saved, config)
    if differ:
        old, new = saved.to_dict(), config.to_dict()
        detail = ", ".join(f"{k} {_value(old, k)!r} -> {_value(new, k)!r}" for k in differ)
        raise ItmatchError(f"{saved_path}: --resume with a different config ({detail}); only "
                           f"{', '.join(RESUMABLE_CHANGES)} may change when resuming")
    run = RunFolder(out)
    if run.last.exists():
        return load_training_checkpoint(run.last)
    if run.best.exists() or run.epochs_logged():
        raise ItmatchError(f"{out}: has no last.pt to resume from, yet epochs of the run ended (best.pt or "
                           "log.jsonl); starting over would overwrite them: put last.pt back, or train into a new "
                           "--out")
    return None


def _value(config: dict, key: str) -> Any:
    section, name = key.split(".")
    return config[section][name]


def _load_dev(data: Path, dev_subset: bool) -> PrecompSplit:
    files = SplitFiles.of(data, "dev")
    missing = [p.name for p in (files.images, files.captions) if not p.is_file()]
    if missing:
        raise ItmatchError(f"{data}: no dev split ({', '.join(missing)} missing); training validates on dev "
                           "after every epoch to keep the best model")
    return load_split(data, "dev", dev_subset=dev_subset)
