"""The training loop, the same for every model family (see `medsam2.train.task` for the split).

One optimizer step = `accumulate` micro-batches of `batch_size` samples on each of the processes;
its samples are those of global indices ``step * global_batch ...``, process ``rank`` taking every
``world_size``-th one. AdamW with a linear warm-up and a cosine decay, gradient clipping, bf16
autocast on CUDA. Every `checkpoint_every` steps the full training state goes to ``OUT/last.pt``;
`resume` continues from it exactly (bit-identical weights on CPU). Validation (one box per object,
propagated through each validation case by the engine) runs at the start, every `validate_every`
steps and at the end; the best model by validation DSC is ``OUT/best.pt``, the final one
``OUT/model.pt``. Only the main process writes files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from medsam2.errors import InputError
from medsam2.io.atomic import atomic_write_text, make_output_folder
from medsam2.models.weights import TRAINING_STATE_FORMAT
from medsam2.train.checkpoints import (
    STATE_VERSION,
    check_resumable,
    load_training_state,
    model_checkpoint,
    restore_rng_state,
    rng_state,
    save,
)
from medsam2.train.config import DataConfig, TrainConfig
from medsam2.train.data import CaseData, TrainingData, prepare_data
from medsam2.train.distributed import Distribution, process_group
from medsam2.train.logs import RunLog
from medsam2.train.task import TrainingTask
from medsam2.train.validation import mean_dice, validation_scores

STATE_NAME, BEST_NAME, FINAL_NAME = "last.pt", "best.pt", "model.pt"
CONFIG_NAME, DATA_MANIFEST_NAME = "config.yaml", "data_manifest.json"


@dataclass
class TrainingSummary:
    """What a call to `train` did."""

    out_dir: Path
    start_step: int
    step: int  # steps done when it returned
    finished: bool  # all configured steps done (else stopped at `stop_at`)
    train_loss: float | None  # mean loss of the last logged window
    val_dsc: float | None  # the last validation's mean DSC
    best_val_dsc: float | None
    best_step: int | None
    skipped: list[str]
    main_process: bool  # False on the other torchrun processes, which report nothing

    @property
    def model_path(self) -> Path:
        return self.out_dir / FINAL_NAME

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_NAME


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor of step `step` (0-based): linear from 1/warmup to 1 over `warmup`
    steps, then a cosine down to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = total - warmup - 1
    # One step after the warmup is the last step: it takes min_ratio, as any last step does.
    progress = (step - warmup) / decay_steps if decay_steps > 0 else 1.0
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def context_slices(config: TrainConfig) -> int:
    """Slices a model family's sampler may need beside an object's labelled slices."""
    return config.model.clip_length - 1 if config.model.name == "sam2" else 0


def make_task(config: TrainConfig, cases: list[CaseData], device: torch.device) -> TrainingTask:
    if config.model.name == "sam2":
        from medsam2.train.sam2 import SAM2Task

        return SAM2Task(config, cases, device)
    from medsam2.train.lite_medsam import LiteMedSAMTask

    return LiteMedSAMTask(config, cases, device)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    report: Callable[[str], None] = lambda line: None,
) -> TrainingSummary:
    """Run (or with `resume`, continue) the training `config` describes, up to `stop_at` steps
    done if given (to split a long schedule into jobs), else to the end. `report` receives
    one-line notes (cases left out, resumption) on the main process."""
    out_dir = Path(config.output.dir)
    if config.output.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise InputError("output.tensorboard needs the tensorboard package: pip install 'medsam2[train]' (or set output.tensorboard: false)")
    if not resume and (out_dir / STATE_NAME).exists():
        raise InputError(f"{out_dir}: already holds a training run ({STATE_NAME}); use --resume to continue it or choose another output folder")
    if stop_at is not None and not 1 <= stop_at <= config.training.steps:
        raise InputError(f"stop at step {stop_at}: must be between 1 and training.steps ({config.training.steps})")
    with process_group(config.training.device) as (distribution, device):
        torch.manual_seed(config.training.seed)
        data = prepare_data(config.data, config.training.seed, context_slices(config), progress and distribution.is_main)
        state = load_training_state(out_dir / STATE_NAME, device) if resume else None
        if state is not None:
            check_resumable(state, out_dir / STATE_NAME, config, data.sha256, distribution.world_size)
            if stop_at is not None and stop_at < state["step"]:
                raise InputError(f"stop at step {stop_at}: {out_dir / STATE_NAME} already holds step {state['step']}; "
                                 "give a later step, or none to finish the run")
        made = not out_dir.exists()
        make_output_folder(out_dir)  # once the data are found good: a bad data set leaves no folder
        try:
            loop = _Loop(config, data, distribution, device, state, progress, report)  # loads the model: may fail too
        except BaseException:
            if made:
                with contextlib.suppress(OSError):  # only while empty
                    out_dir.rmdir()
            raise
        if distribution.is_main:
            for line in data.skipped:
                report(line)
            if not data.val:
                report(f"no validation: {no_validation_reason(config.data, len(data.train) + len(data.skipped))}; "
                       f"{BEST_NAME} is not written, {FINAL_NAME} is the model after the last step")
        stop = stop_at or config.training.steps
        if distribution.is_main and loop.step < stop:  # a finished run's files stay as they are
            atomic_write_text(out_dir / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=False))
            atomic_write_text(out_dir / DATA_MANIFEST_NAME, json.dumps(data.manifest, indent=1) + "\n")
        return loop.run(stop)


def no_validation_reason(config: DataConfig, cases: int) -> str:
    """Why a run of `cases` cases found has no validation case: validation is off, there are too few
    cases to hold one out, or the held-out ones have no label."""
    if not config.val_cases and config.val_fraction == 0:
        return "data.val_fraction is 0"
    if not config.val_cases and cases == 1:
        return "one case, none left to hold out (give two or more, or data.val_cases)"
    return "the validation cases have no labelled voxel"


class _Loop:
    """The state of one `train` call."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        distribution: Distribution,
        device: torch.device,
        state: dict[str, Any] | None,
        progress: bool,
        report: Callable[[str], None],
    ) -> None:
        self.config, self.data, self.distribution, self.device = config, data, distribution, device
        self.progress = progress and distribution.is_main
        self.out_dir = Path(config.output.dir)
        self.task = make_task(config, data.train, device)
        self.parameters = [p for p in self.task.network.parameters() if p.requires_grad]
        if not self.parameters:
            raise InputError("nothing to train: every parameter is frozen")
        optim = config.optimizer
        self.optimizer = torch.optim.AdamW(self.parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        schedule = partial(
            warmup_cosine, warmup=optim.warmup_steps, total=config.training.steps, min_ratio=optim.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.module: torch.nn.Module = self.task.step_module
        if distribution.active:
            self.module = DistributedDataParallel(
                self.module,
                device_ids=[device.index] if device.type == "cuda" else None,
                # Prompts vary by sample: parts such as the point embeddings sit out some steps.
                find_unused_parameters=True,
            )
        self.step = 0
        self.best: dict[str, Any] = {"dsc": None, "step": None}
        if state is not None:
            self.task.network.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng_state(state["rng"][distribution.rank], device)
            self.step, self.best = state["step"], state["best"]
            if distribution.is_main:
                report(f"resuming {self.out_dir / STATE_NAME} at step {self.step} of {config.training.steps}")
        self.start_step = self.step
        self.resumed = state is not None
        self.saved_step = self.step if self.resumed else None  # the step last.pt holds
        self.report = report
        self.train_loss: float | None = None
        self.val_dsc: float | None = None
        self.log: RunLog | None = None

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: int) -> TrainingSummary:
        """Train up to step `stop`; logs are opened only when there is a step to take."""
        config = self.config
        if self.distribution.is_main and self.step < stop:
            columns = [f"train_{term}" for term in self.task.loss_terms] + ["lr", "grad_norm", "samples_per_s", "val_dsc"]
            self.log = RunLog(self.out_dir, columns, self.step if self.resumed else None, config.output.tensorboard)
        try:
            self.module.train()
            if config.output.validate_at_start and self.step == 0:
                self._validate()
            window: dict[str, float] = {}
            window_steps, window_time = 0, 0.0
            with tqdm(
                total=config.training.steps, initial=self.step, desc="training", unit="step", disable=not self.progress
            ) as bar:
                while self.step < stop:
                    started = time.perf_counter()
                    terms, grad_norm, lr = self._optimizer_step()
                    window_time += time.perf_counter() - started
                    window_steps += 1
                    for key, value in terms.items():
                        window[key] = window.get(key, 0.0) + value
                    bar.update(1)
                    bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")
                    done, last = self.step, self.step == config.training.steps
                    row: dict[str, float | None] = {}
                    if done % config.output.log_every == 0 or done == stop:
                        means = self.distribution.mean({k: v / window_steps for k, v in window.items()})
                        samples = window_steps * config.training.batch_size * config.training.accumulate * self.distribution.world_size
                        self.train_loss = means["loss"]
                        row = {f"train_{k}": v for k, v in means.items()}
                        row |= {"lr": lr, "grad_norm": grad_norm, "samples_per_s": samples / window_time}
                        window, window_steps, window_time = {}, 0, 0.0
                    if done % config.output.validate_every == 0 or last:
                        row["val_dsc"] = self._validate(log=False)
                    if row and self.log is not None:
                        self.log.write(done, row)
                    if done % config.output.checkpoint_every == 0 or done == stop:
                        self._save_state()
                    if last:
                        self._save_model(FINAL_NAME)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (a job's time limit): say what is kept
            if self.distribution.is_main:
                self.report(self._stopped_in_words())
            raise
        finally:
            if self.log is not None:
                self.log.close()
        return TrainingSummary(
            self.out_dir,
            self.start_step,
            self.step,
            self.step == config.training.steps,
            self.train_loss,
            self.val_dsc,
            self.best["dsc"],
            self.best["step"],
            self.data.skipped,
            self.distribution.is_main,
        )

    def _optimizer_step(self) -> tuple[dict[str, float], float, float]:
        """One optimizer step; (loss terms averaged over its micro-batches on this process, gradient
        norm before clipping, learning rate)."""
        training, world, rank = self.config.training, self.distribution.world_size, self.distribution.rank
        global_batch = training.batch_size * training.accumulate * world
        totals: dict[str, float] = {}
        for micro in range(training.accumulate):
            first = self.step * global_batch + micro * training.batch_size * world
            indices = [first + j * world + rank for j in range(training.batch_size)]
            batch = self.task.batch(indices)
            last_micro = micro == training.accumulate - 1
            # Gradients are summed locally and all-reduced once, on the step's last micro-batch.
            sync = contextlib.nullcontext() if last_micro or not self.distribution.active else self.module.no_sync()
            with sync:
                with self._autocast():
                    terms = self.module(batch)
                (terms["loss"] / training.accumulate).backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / training.accumulate
        clip = self.config.optimizer.clip_grad_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return totals, grad_norm, lr

    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.config.training.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # -- validation and files --------------------------------------------------------------------

    def _validate(self, log: bool = True) -> float | None:
        """Mean one-box 3D DSC over the validation cases (shared out between the processes); a
        new best is saved as best.pt."""
        if not self.data.val:
            return None
        mine = self.data.val[self.distribution.rank :: self.distribution.world_size]
        scores = [s for part in self.distribution.gather(validation_scores(mine, self.task.predictor())) for s in part]
        self.module.train()
        dsc = mean_dice(scores)
        self.val_dsc = dsc
        if self.best["dsc"] is None or dsc > self.best["dsc"]:
            self.best = {"dsc": dsc, "step": self.step}
            self._save_model(BEST_NAME, {"val_scores": [list(s) for s in scores]})
        if log and self.log is not None:
            self.log.write(self.step, {"val_dsc": dsc})
        return dsc

    def _metrics(self) -> dict[str, Any]:
        return {
            "train_loss": self.train_loss,
            "val_dsc": self.val_dsc,
            "best_val_dsc": self.best["dsc"],
            "best_step": self.best["step"],
        }

    def _save_model(self, name: str, extra: dict[str, Any] | None = None) -> None:
        if self.distribution.is_main:
            document = model_checkpoint(
                self.task.network, self.task.model_name, self.config, self.data.sha256, self.step, self._metrics() | (extra or {})
            )
            save(document, self.out_dir / name)

    def _stopped_in_words(self) -> str:
        stopped = f"stopped at step {self.step} of {self.config.training.steps}"
        if self.saved_step is None:
            return (f"{stopped}, before the first checkpoint (every {self.config.output.checkpoint_every} steps, "
                    "output.checkpoint_every): nothing to resume, run it again")
        return f"{stopped}: {self.out_dir / STATE_NAME} holds step {self.saved_step}; continue with --resume"

    def _save_state(self) -> None:
        rng = self.distribution.gather(rng_state(self.device))  # every process's, collected on all
        if not self.distribution.is_main:
            return
        document = model_checkpoint(
            self.task.network, self.task.model_name, self.config, self.data.sha256, self.step, self._metrics()
        )
        document |= {
            "format": TRAINING_STATE_FORMAT,
            "version": STATE_VERSION,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "best": dict(self.best),
            "world_size": self.distribution.world_size,
        }
        save(document, self.out_dir / STATE_NAME)
        self.saved_step = self.step
