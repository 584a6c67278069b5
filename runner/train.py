"""The built-in trainer. It runs unchanged in one process or in every rank of torchrun.

Under torchrun (WORLD_SIZE > 1) each rank joins the process group (nccl on CUDA, gloo
on CPU), wraps the model in DDP and reads its own shard of every global batch, so
``trainer.batch_size`` is the global batch whatever the world size. Rank 0 writes
``metrics.jsonl`` (one line per epoch), ``metrics.json`` (final) and ``checkpoint.pt``
into the job's output dir, and every rank returns the objective.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_fraction: float = 0.0,
    min_lr_fraction: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to ``min_lr_fraction`` of the base LR."""
    warmup = int(total_steps * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_fraction + (1 - min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file, fsync, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _progress_bar(cfg: DictConfig, total: int, is_rank0: bool):
    mode = cfg.trainer.progress
    want_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
    if not (is_rank0 and want_bar):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, leave=False)


@torch.no_grad()
def evaluate(model, x, y, task: str, device, world_size: int) -> dict[str, float]:
    """Loss (and accuracy) over this rank's shard, summed over all ranks."""
    model.eval()
    out = model(x.to(device))
    y = y.to(device)
    if task == "classification":
        loss_sum = F.cross_entropy(out, y, reduction="sum")
        correct = (out.argmax(1) == y).sum().to(loss_sum.dtype)
    else:
        loss_sum = F.mse_loss(out, y, reduction="sum")
        correct = torch.zeros((), device=device)
    totals = torch.stack([loss_sum, correct, torch.tensor(float(len(x)), device=device)])
    if world_size > 1:
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    metrics = {"val_loss": loss_sum / count}
    if task == "classification":
        metrics["val_acc"] = correct / count
    return metrics


def train(cfg: DictConfig) -> float:
    """Train ``cfg`` (the task config, no ``hydra`` node) and return the objective."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    is_rank0 = rank == 0
    use_cuda = cfg.trainer.device in ("auto", "cuda") and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    output_dir = Path(cfg.paths.output_dir)

    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model, in_features=data.in_features, out_features=data.out_features)
    model = model.to(device)
    ddp_model = (
        DDP(model, device_ids=[local_rank] if use_cuda else None) if world_size > 1 else model
    )
    optimizer = instantiate(cfg.optim, params=model.parameters())

    accum = cfg.trainer.grad_accum_steps
    micro_batch = cfg.trainer.batch_size // (world_size * accum)
    # Each rank takes every world_size-th index of one shared permutation, so the
    # union of the ranks' batches is exactly the single-process batch.
    sampler = DistributedSampler(
        range(len(data.x_train)),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    steps_per_epoch = len(sampler) // (micro_batch * accum)
    total_steps = steps_per_epoch * cfg.trainer.epochs
    scheduler = (
        instantiate(cfg.scheduler)(optimizer, total_steps=total_steps) if cfg.scheduler else None
    )
    loss_fn = F.cross_entropy if data.task == "classification" else F.mse_loss
    x_val, y_val = data.x_val[rank::world_size], data.y_val[rank::world_size]
    known = {"train_loss", "val_loss", "lr"} | (
        {"val_acc"} if data.task == "classification" else set()
    )
    if cfg.trainer.objective not in known:
        raise ValueError(
            f"trainer.objective={cfg.trainer.objective!r} is not a metric of this run; "
            f"use one of {sorted(known)}"
        )

    if is_rank0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.jsonl").unlink(missing_ok=True)
        log.info(
            "training %s on %s: %d rank(s), global batch %d (%d x %d ranks x %d accum), %d steps",
            type(model).__name__,
            device,
            world_size,
            cfg.trainer.batch_size,
            micro_batch,
            world_size,
            accum,
            total_steps,
        )
    bar = _progress_bar(cfg, total_steps, is_rank0)
    plain_lines = is_rank0 and bar is None and cfg.trainer.progress != "off"
    step, metrics, started = 0, {}, time.perf_counter()
    for epoch in range(cfg.trainer.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        ddp_model.train()
        loss_total = torch.zeros((), device=device)
        for s in range(steps_per_epoch):
            for micro in range(accum):
                first = (s * accum + micro) * micro_batch
                idx = order[first : first + micro_batch]
                x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)
                # Gradients are all-reduced only on the last micro-batch of a step.
                sync = micro == accum - 1 or world_size == 1
                with nullcontext() if sync else ddp_model.no_sync():
                    loss = loss_fn(ddp_model(x), y) / accum
                    loss.backward()
                loss_total += loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            if bar is not None:
                bar.update()
        if world_size > 1:
            dist.all_reduce(loss_total)
        metrics = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": loss_total.item() / max(1, steps_per_epoch * world_size),
            **evaluate(model, x_val, y_val, data.task, device, world_size),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if is_rank0:
            with open(output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if cfg.trainer.checkpoint:
                atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "epoch": epoch + 1,
                        "step": step,
                        "config": OmegaConf.to_container(cfg, resolve=True),
                    },
                    output_dir / "checkpoint.pt",
                )
            summary = " ".join(
                f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(("train_", "val_"))
            )
            if bar is not None:
                bar.set_postfix_str(summary)
            elif plain_lines:
                log.info("epoch %d/%d %s", epoch + 1, cfg.trainer.epochs, summary)
    if bar is not None:
        bar.close()

    objective = cfg.trainer.objective
    result = float(metrics[objective])
    if is_rank0:
        final = {
            **metrics,
            "objective": objective,
            "objective_value": result,
            "world_size": world_size,
        }
        (output_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        log.info(
            "done: %s=%.4f (%s)",
            objective,
            result,
            " ".join(f"{k}={metrics[k]:.4f}" for k in metrics if k.startswith("val_")),
        )
    if world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return result
