"""The built-in trainer. It runs unchanged in one process or in every rank of torchrun.

Under torchrun (WORLD_SIZE > 1) each rank joins the process group (nccl on CUDA, gloo
on CPU), wraps the model in DDP and reads its own shard of every global batch, so
``trainer.batch_size`` is the global batch whatever the world size. Rank 0 writes
``metrics.jsonl`` (one line per epoch), ``metrics.json`` (final) and ``checkpoint.pt``
(atomically, at every epoch end and every ``trainer.checkpoint_every`` steps) into the
job's output dir, and every rank returns the objective. With ``trainer.resume=auto`` a
run continues from the checkpoint in its output dir and ends exactly as an
uninterrupted run would: model, optimiser, schedule, step, RNG states and the
partial epoch all come back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler, TensorDataset

from runner.errors import invalid
from runner.launch.procs import atomic_file
from runner.metrics import append_metrics, keep_epochs
from runner.stop import stop_requested
from runner.trace import mark
from runner.trainer.loggers import NoLogger, make_logger

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


CHECKPOINT = "checkpoint.pt"
# Steps between the ranks' agreement on whether a stop was requested (one all_reduce
# of one number), mid-epoch; and at every epoch end.
STOP_CHECK_EVERY = 10


class CheckpointError(CompactHydraException, RuntimeError):
    """A checkpoint that exists but cannot be resumed from (Hydra prints the message
    alone, not a traceback)."""


def load_checkpoint(cfg: DictConfig, path: Path, device) -> dict | None:
    """The state to resume from, per ``trainer.resume``: "auto" (this run's checkpoint
    if there is one), "never", or a path. A checkpoint that is there but unreadable is
    an error, never a silent fresh start."""
    resume = str(cfg.trainer.resume)
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(
                f"trainer.resume={resume!r}: no such checkpoint file. Fix: point it at a "
                f"{CHECKPOINT}, or use trainer.resume=auto"
            )
    elif not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        missing = {"model", "optimizer", "epoch", "step_in_epoch", "step", "per_rank"} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
    except Exception as error:
        raise CheckpointError(
            f"cannot resume from checkpoint {path}: it is corrupt or not a runner checkpoint "
            f"({type(error).__name__}: {error}). Fix: delete or move it to start over, or "
            f"pass trainer.resume=never"
        ) from error
    return state


def armed_fault(rank: int) -> int | None:
    """The test hook RUNNER_FAULT="RANK:STEP", read once before training: the global
    step after which this rank SIGKILLs itself, or None. A malformed value is an error
    naming it; an armed hook is said in the log of the rank it kills, so a run killed
    by it is never mistaken for an OOM kill."""
    value = os.environ.get("RUNNER_FAULT")
    if not value:
        return None
    try:
        fault_rank, fault_step = (int(x) for x in value.split(":"))
    except ValueError:
        raise ValueError(
            invalid(
                "RUNNER_FAULT",
                value,
                "the test hook takes RANK:STEP, two integers (that rank SIGKILLs itself "
                "after that global step)",
                "unset RUNNER_FAULT for a real run, or set it like RUNNER_FAULT=1:5",
            )
        ) from None
    if fault_rank != rank:
        return None
    log.warning(
        "RUNNER_FAULT=%s is set: this rank (%d) SIGKILLs itself after global step %d, "
        "once per run dir (a test hook; unset it for real runs)",
        value,
        rank,
        fault_step,
    )
    return fault_step


def inject_fault(fault_step: int, step: int, output_dir: Path) -> None:
    """Fault injection for tests (see armed_fault): SIGKILL this rank after
    ``fault_step``, once per output dir (a marker file remembers it)."""
    marker = output_dir / f".fault_rank{os.environ.get('RANK', '0')}_step{fault_step}"
    if step == fault_step and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)


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
    fault = armed_fault(rank)
    use_cuda = cfg.trainer.device in ("auto", "cuda") and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        mark("group")
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

    def leave_group() -> None:
        """Leave the process group, the DDP wrapper dropped first. Its reducer holds the
        group: dropped after ``destroy_process_group``, the reducer's destructor (run
        with the GIL held) would end the group's gloo threads, and one still releasing
        a finished collective's tensors (``all_gather_object``'s) waits for the GIL:
        a deadlock (pytorch/pytorch#56297). Dropped first, the group ends in
        ``destroy_process_group``, whose destructor lets the GIL go."""
        nonlocal ddp_model
        ddp_model = model
        dist.destroy_process_group()

    optimizer = instantiate(cfg.optim, params=model.parameters())
    mark("optimizer")

    accum = cfg.trainer.grad_accum_steps
    micro_batch = cfg.trainer.batch_size // (world_size * accum)
    # Each rank takes every world_size-th index of one shared permutation, so the
    # union of the ranks' batches is exactly the single-process batch.
    sampler: DistributedSampler[int] = DistributedSampler(
        TensorDataset(data.x_train),  # only its length is used
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

    checkpoint_path = output_dir / CHECKPOINT
    state = load_checkpoint(cfg, checkpoint_path, device)
    start_epoch, skip_steps, step, metrics = 0, 0, 0, {}
    loss_carry = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, skip_steps, step = state["epoch"], state["step_in_epoch"], state["step"]
        metrics = state["metrics"]
        per_rank = state["per_rank"][rank] if rank < len(state["per_rank"]) else None
        if per_rank is not None:
            torch.set_rng_state(per_rank["rng"])
            loss_carry = per_rank["loss_total"]
    if is_rank0:
        output_dir.mkdir(parents=True, exist_ok=True)
        keep_epochs(output_dir, start_epoch)
        log.info(
            "training %s on %s: %d rank(s), global batch %d (%d x %d ranks x %d accum), %d steps%s",
            type(model).__name__,
            device,
            world_size,
            cfg.trainer.batch_size,
            micro_batch,
            world_size,
            accum,
            total_steps,
            f", resuming at step {step} from {checkpoint_path}" if state else "",
        )

    def save(epoch: int, step_in_epoch: int, loss_total: torch.Tensor) -> None:
        """Every rank takes part (its RNG and partial loss travel); rank 0 writes."""
        mine = {"rng": torch.get_rng_state(), "loss_total": loss_total.item()}
        per_rank: list[Any] = [mine]
        if world_size > 1:
            per_rank = [None] * world_size
            dist.all_gather_object(per_rank, mine)
        if is_rank0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "step": step,
                "metrics": metrics,
                "per_rank": per_rank,
                "world_size": world_size,
                "config": OmegaConf.to_container(cfg, resolve=True),
            }
            with atomic_file(checkpoint_path) as f:
                torch.save(state, f)

    logger = make_logger(cfg, output_dir, checkpoint_path, start_epoch) if is_rank0 else NoLogger()

    bar = _progress_bar(cfg, total_steps, is_rank0)
    if bar is not None:
        bar.update(step)
    plain_lines = is_rank0 and bar is None and cfg.trainer.progress != "off"

    def stopped(at: int) -> float:
        """A stop was requested (runner.stop): the checkpoint of step ``at`` is saved;
        end here without a result (the job is requeued and resumes from it; its tracked
        run stays open for the next allocation)."""
        if bar is not None:
            bar.close()
        if is_rank0:
            log.info("stop requested: saved the checkpoint of step %d; ending here", at)
        if world_size > 1:
            leave_group()
        return math.nan

    every = cfg.trainer.checkpoint_every if cfg.trainer.checkpoint else 0
    initial_step = step  # resumed: not 0
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.trainer.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        ddp_model.train()
        loss_total = torch.full((), loss_carry, device=device)
        first_step = skip_steps if epoch == start_epoch else 0
        loss_carry = 0.0
        for s in range(first_step, steps_per_epoch):
            for micro in range(accum):
                first = (s * accum + micro) * micro_batch
                idx = order[first : first + micro_batch]
                x, y = data.x_train[idx], data.y_train[idx]
                if use_cuda:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                # Gradients are all-reduced only on the last micro-batch of a step.
                sync = micro == accum - 1 or world_size == 1
                with nullcontext() if sync else ddp_model.no_sync():
                    loss = loss_fn(ddp_model(x), y)
                    if accum > 1:
                        loss = loss / accum
                    loss.backward()
                loss_total += loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            if step == initial_step + 1:
                mark("first_step")
            if fault is not None:
                inject_fault(fault, step, output_dir)
            if bar is not None:
                bar.update()
            if every and step % every == 0 and s + 1 < steps_per_epoch:
                save(epoch, s + 1, loss_total)
            if step % STOP_CHECK_EVERY == 0 and s + 1 < steps_per_epoch and stop_requested():
                # Every rank agreed on this step (stop_requested): save it and end, so
                # the requeued job resumes here.
                save(epoch, s + 1, loss_total)
                return stopped(step)
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
            # The objective of every epoch too: what a search prunes on.
            append_metrics(output_dir, {**metrics, "objective": metrics[cfg.trainer.objective]})
        logger.log(metrics, epoch + 1)  # by epoch, as the study and the plots count
        stop = epoch + 1 < cfg.trainer.epochs and stop_requested()
        if cfg.trainer.checkpoint or stop:
            save(epoch + 1, 0, torch.zeros((), device=device))
        if stop:
            return stopped(step)
        if is_rank0:
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
        logger.close(final, int(metrics["epoch"]))
        log.info(
            "done: %s=%.4f (%s)",
            objective,
            result,
            " ".join(f"{k}={metrics[k]:.4f}" for k in metrics if k.startswith("val_")),
        )
    if world_size > 1 and dist.is_initialized():
        leave_group()
    return result
