"""The training loop: iterations of SGD over the loss dict of ``RCNN.forward``, checkpointed so that a
run stopped at any checkpoint and resumed gives the losses of the uninterrupted run (on the CPU, exactly).

OUT holds last.pth (the checkpoint), metrics.jsonl, tensorboard/ when installed, model_final.safetensors
(the weights, with what rebuilds their model as metadata: ``detector.weights.model_metadata``) and
eval.json (COCO AP on the validation set).
Each file is written atomically (``detector.atomic``): a run killed at any moment, or stopped by a full
disk (OSError naming the file), leaves every file whole, its previous version at worst; metrics.jsonl
is appended to line by line (``training/metrics.py`` says why). TensorBoard's event files are
the tensorboard package's own appending writer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from detector import distributed as dist
from detector.atomic import atomic_write_text, remove_stale_temporaries
from detector.data.coco import CocoDataset
from detector.modeling.rcnn import ModelConfig, build_model
from detector.modeling.presets import train_recipe
from detector.structures import Targets
from detector.training.checkpoint import (CHECKPOINT_NAME, atomic_save, capture_rng, load_checkpoint, restore_rng,
                                          seed_everything)
from detector.training.data import TrainingSet, build_loader, label_map_for
from detector.training.metrics import METRICS_NAME, MetricsLog
from detector.training.optim import (LRSchedule, build_optimizer, default_lr, default_warmup_iters, set_lr,
                                     steps_in_iterations)
from detector.training.start import initialise, read_start_trunk, refuse_untrained_frozen_bn, with_trainable_stages
from detector.training.validation import evaluate, load_validation_set
from detector.weights.loading import load_state_dict_strict, save_weights
from detector.weights.model_metadata import MODEL_KEY, model_metadata

logger = logging.getLogger(__name__)

FINAL_WEIGHTS_NAME = "model_final.safetensors"
EVAL_NAME = "eval.json"
DEFAULT_EPOCHS = 12  # Detectron2's "1x" schedule is about 12 COCO epochs


@dataclass(frozen=True)
class TrainConfig:
    out_dir: Path
    train_images: Path
    train_ann: Path
    val_images: Path | None = None
    val_ann: Path | None = None
    # None below: the preset's recipe (detector.modeling.presets.RECIPES), else torchvision's.
    iters: int | None = None  # the schedule's length; else epochs x batches per epoch
    epochs: int | None = None  # the recipe's iters, else DEFAULT_EPOCHS, when neither is given
    batch_size: int = 2  # images per process and step (torchvision's recipe: 2 per GPU, 8 GPUs)
    aspect_ratio_group_factor: int = 0  # 0: batches of one orientation; torchvision's recipe: 3 (8 ratio groups)
    lr: float | None = None  # None: optim.default_lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int | None = None  # None: optim.default_warmup_iters
    lr_schedule: str | None = None  # None: step with lr_steps, else the recipe's
    lr_steps: tuple[int, ...] | None = None  # epochs after which step decay applies (torchvision's); None: 2/3, 8/9
    clip_grad_norm: float | None = None  # 0: no clipping
    workers: int = 0
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 500
    amp: bool = False
    min_sizes: tuple[int, ...] | None = None  # None: the recipe's, else the preset's InputConfig.min_size
    max_size: int | None = None  # None: the preset's InputConfig.max_size
    weights: Path | None = None  # a trained model to start from
    backbone_weights: Path | str | None = None  # an ImageNet classifier file or catalogue name: the trunk's start
    trainable_backbone_layers: int | None = None  # trunk stages trained, 0..5 from the top; None: the preset's
    log_every: int = 20
    stop_at: int | None = None  # end this run after that iteration, checkpointed, for --resume to go on
    progress: bool = True
    tensorboard: bool = True


@dataclass(frozen=True)
class TrainResult:
    iterations: int  # done so far, this run and those it resumed
    total_iters: int
    checkpoint: Path
    final_weights: Path | None  # None when stopped before the end
    eval: dict | None


class Trainer:
    def __init__(self, model_cfg: ModelConfig, cfg: TrainConfig, *, preset: str = "custom",
                 dist_info: dist.DistInfo = dist.DistInfo(), device: torch.device | None = None) -> None:
        self.cfg, self.preset = cfg, preset
        self.dist, self.device = dist_info, device or torch.device(cfg.device)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        if cfg.amp and not self.use_amp:
            logger.warning("--amp needs a CUDA device: training in float32 on %s", self.device)
        model_cfg = with_trainable_stages(model_cfg, cfg.trainable_backbone_layers)
        refuse_untrained_frozen_bn(model_cfg, cfg, preset)
        trunk = read_start_trunk(model_cfg, cfg, preset=preset, dist_info=self.dist)  # before the data: fail early
        seed_everything(cfg.seed + self.dist.rank)
        recipe = train_recipe(preset)
        self.model_cfg, self.train_set = _training_set(model_cfg, cfg, recipe.min_sizes)
        self.val_gt = load_validation_set(cfg.val_images, cfg.val_ann) if cfg.val_ann else None  # every rank: sharded
        self.loader, self.batches = build_loader(self.train_set, cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                                                 rank=self.dist.rank, world_size=self.dist.world_size,
                                                 group_factor=cfg.aspect_ratio_group_factor,
                                                 pin_memory=self.device.type == "cuda")
        per_epoch = dist.max_over_ranks(len(self.batches.batches), self.dist, self.device)
        length = cfg.iters or (None if cfg.epochs else recipe.iters)  # --epochs replaces the recipe's length
        self.total_iters = length or (cfg.epochs or DEFAULT_EPOCHS) * per_epoch
        warmup = cfg.warmup_iters if cfg.warmup_iters is not None else recipe.warmup_iters
        warmup = default_warmup_iters(self.total_iters) if warmup is None else min(warmup, self.total_iters)
        kind = cfg.lr_schedule or ("step" if cfg.lr_steps else recipe.lr_schedule)
        clip = cfg.clip_grad_norm if cfg.clip_grad_norm is not None else recipe.clip_grad_norm
        self.clip_grad_norm = clip or None  # 0: off
        lr = cfg.lr or default_lr(preset, cfg.batch_size, self.dist.world_size)
        steps = None if cfg.lr_steps is None else steps_in_iterations(cfg.lr_steps, per_epoch, self.total_iters)
        self.schedule = LRSchedule(lr, self.total_iters, warmup, kind=kind, step_at=steps)

        self.model = build_model(self.model_cfg).to(self.device)
        self.optimizer = build_optimizer(self.model, lr, cfg.momentum, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.iteration, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._rng: dict | None = None
        if cfg.resume:
            for flag, value in (("--weights", cfg.weights), ("--backbone-weights", cfg.backbone_weights)):
                if value is not None:
                    logger.warning("--resume continues from the checkpoint: %s %s is not loaded", flag, value)
            self._restore(cfg.out_dir / CHECKPOINT_NAME)
        else:
            initialise(self.model, cfg, trunk)
        self.net = self.model
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

    def run(self) -> TrainResult:
        cfg, main = self.cfg, self.dist.is_main
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        if main:  # before this run writes anything: what is there was left by a killed one
            for name in (CHECKPOINT_NAME, METRICS_NAME, FINAL_WEIGHTS_NAME, EVAL_NAME):
                for tmp in remove_stale_temporaries(cfg.out_dir / name):
                    logger.info("removed %s, a file half-written by a killed run", tmp)
        stop = min(cfg.stop_at or self.total_iters, self.total_iters)
        log = MetricsLog(cfg.out_dir, total_iters=self.total_iters, start_iter=self.iteration, main=main,
                         progress=cfg.progress, tensorboard=cfg.tensorboard)
        if main:
            s = self.schedule
            logger.info("training %s for %d iterations (lr %g, warm-up %d, %s decay) into %s", self.preset,
                        self.total_iters, s.base_lr, s.warmup_iters, s.kind, cfg.out_dir)
        batches = self._batches()
        if self._rng is not None:
            restore_rng(self._rng)
        self.model.train()
        try:
            while self.iteration < stop:
                start = time.perf_counter()
                images, targets, _ = next(batches)
                lr = self.schedule.lr_at(self.iteration)
                set_lr(self.optimizer, lr)
                losses = self._step(images, targets)
                self.iteration += 1
                log.update(losses, time.perf_counter() - start, lr)
                if self.iteration % cfg.log_every == 0 or self.iteration == stop:
                    means = dist.mean_over_ranks(log.window_means(), self.dist, self.device)
                    log.write(self.iteration, self.epoch, lr, means)
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == stop:
                    self._save_checkpoint()
        finally:
            log.close()
        return self._finish()

    def _step(self, images: list[torch.Tensor], targets: list[Targets]) -> dict[str, float]:
        """One SGD update; the loss terms' values."""
        images = [i.to(self.device, non_blocking=True) for i in images]
        targets = [t.to(self.device) for t in targets]
        with torch.autocast(self.device.type, enabled=self.use_amp):
            losses = self.net(images, targets)
        total = sum(losses.values())
        values = {k: v.item() for k, v in losses.items()} | {"total": total.item()}
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"the loss is {values['total']} at iteration {self.iteration + 1}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # With AMP the scaler skips steps with inf/NaN gradients itself; without it such a step would
        # write NaN into the weights (and the next checkpoint): stop instead.
        if not self.scaler.is_enabled() and not math.isfinite(norm.item()):
            raise FloatingPointError(
                f"the gradients' norm is {norm.item()} at iteration {self.iteration + 1} (loss {values['total']:.4g})"
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values

    def _batches(self) -> Iterator:
        """Batches without end, epoch after epoch, keeping (epoch, batches consumed) up to date."""
        while True:
            self.batches.start(self.epoch, self.batch_in_epoch)
            for batch in self.loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _save_checkpoint(self) -> None:
        position = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}
        ranks = dist.gather_to_all((capture_rng(), position), self.dist)
        if self.dist.is_main:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "iteration": self.iteration,
                "sampler": [position for _, position in ranks],  # one per process
                "rng": [rng for rng, _ in ranks],
                "meta": {"preset": self.preset, "class_names": list(self.model_cfg.class_names),
                         "total_iters": self.total_iters,
                         "trainable_stages": self.model_cfg.backbone.trainable_stages},
            }
            atomic_save(state, self.cfg.out_dir / CHECKPOINT_NAME)
        dist.barrier(self.dist)

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        trained = state.get("meta", {}).get("trainable_stages", self.model_cfg.backbone.trainable_stages)
        if trained != self.model_cfg.backbone.trainable_stages:
            raise ValueError(f"{path}: trained {trained} trunk stages, not {self.model_cfg.backbone.trainable_stages}: "
                             f"resume with --trainable-backbone-layers {trained}")
        load_state_dict_strict(self.model, state["model"], source=str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        n = len(state["rng"])
        if n != self.dist.world_size:
            logger.warning("%s was written by %d processes, now %d: the data order and random draws will differ "
                           "from those of an uninterrupted run", path, n, self.dist.world_size)
        position = state["sampler"][self.dist.rank % n]
        self.epoch, self.batch_in_epoch = int(position["epoch"]), int(position["batch_in_epoch"])
        self._rng = state["rng"][self.dist.rank % n]
        planned = state.get("meta", {}).get("total_iters", self.total_iters)
        if planned != self.total_iters and self.dist.is_main:
            logger.warning("%s was written for a %d-iteration schedule, now %d: the learning rate follows the new one",
                           path, planned, self.total_iters)
        if self.dist.is_main:
            logger.info("resuming from %s at iteration %d (epoch %d)", path, self.iteration, self.epoch)

    def _finish(self) -> TrainResult:
        out, checkpoint = self.cfg.out_dir, self.cfg.out_dir / CHECKPOINT_NAME
        if self.iteration < self.total_iters:
            return TrainResult(self.iteration, self.total_iters, checkpoint, None, None)
        final, results = out / FINAL_WEIGHTS_NAME, None
        if self.dist.is_main:
            metadata = {MODEL_KEY: model_metadata(self.preset, self.model_cfg), "iterations": self.iteration,
                        "min_sizes": list(self.train_set.min_sizes)}
            save_weights(self.model, final, metadata=metadata)
        if self.val_gt is not None:  # each rank predicts its share, rank 0 scores
            results = evaluate(self.model, self.val_gt, self.cfg.val_images, device=self.device, name=self.preset,
                               dist_info=self.dist)
        if results is not None:
            atomic_write_text(out / EVAL_NAME, json.dumps(results, indent=2) + "\n")
            logger.info("validation: %s", ", ".join(f"{t} AP {s['AP']:.3f}" for t, s in results.items()))
        dist.barrier(self.dist)
        return TrainResult(self.iteration, self.total_iters, checkpoint, final, results)


def _training_set(model_cfg: ModelConfig, cfg: TrainConfig,
                  recipe_min_sizes: tuple[int, ...] | None = None) -> tuple[ModelConfig, TrainingSet]:
    """The data set, and the model's configuration as trained: the data set's classes unless the preset
    names all of them already (then the labels are mapped to the preset's), and inference at the largest
    shorter side it trains at (Detectron2's multi-scale recipe tests at the largest) and its longer-side
    limit. The training forward pass reads no input size (the data pipeline resizes), so the model built
    from it trains as any other, and predicts (end-of-run validation, the saved file) as detector.eval will."""
    coco = CocoDataset(cfg.train_images, cfg.train_ann, with_masks=model_cfg.mask is not None)
    try:
        label_map = label_map_for(coco.class_names, model_cfg.class_names)
    except ValueError as e:
        logger.warning("%s (%s): training %d classes of %s instead", e, cfg.train_ann, len(coco.class_names) - 1,
                       cfg.train_ann)
        model_cfg = replace(model_cfg, class_names=tuple(coco.class_names), keypoint_classes=coco.keypoint_class_names)
        label_map = None
    if model_cfg.keypoint is not None and not coco.has_keypoints:
        logger.warning("%s has no keypoints: the keypoint head learns nothing", cfg.train_ann)
    elif model_cfg.keypoint is not None and set(coco.keypoint_class_names) - set(model_cfg.keypoint_classes):
        logger.warning("%s has keypoints for %s, the model learns them for %s only", cfg.train_ann,
                       list(coco.keypoint_class_names), list(model_cfg.keypoint_classes))
    inp = model_cfg.input
    train_set = TrainingSet(coco, model_cfg, min_sizes=cfg.min_sizes or recipe_min_sizes or (inp.min_size,),
                            max_size=cfg.max_size or inp.max_size, seed=cfg.seed, label_map=label_map)
    inp = replace(inp, min_size=max(train_set.min_sizes), max_size=train_set.max_size)
    return replace(model_cfg, input=inp), train_set


def train(model_cfg: ModelConfig, cfg: TrainConfig, *, preset: str = "custom") -> TrainResult:
    """Train (resume, with ``cfg.resume``) in this process, or in each process that torchrun started."""
    dist_info, device = dist.init_distributed(cfg.device)
    try:
        return Trainer(model_cfg, cfg, preset=preset, dist_info=dist_info, device=device).run()
    finally:
        dist.finish(dist_info)
