"""The benchmark workloads, the same code under every launcher:

- ``allreduce``: join a gloo group, all-reduce once, exit (the trivial task);
- ``train``: a fixed number of DDP steps of the default MLP on spirals, about 2 s of
  work on 2 ranks here, so a point costs about 5 s end to end (the training task).

``python workloads.py [allreduce|train]`` runs one under torchrun's environment."""

import sys

import torch
import torch.distributed as dist

TRAIN_STEPS = 250


def allreduce() -> float:
    dist.init_process_group("gloo")
    value = torch.ones(1)
    dist.all_reduce(value)
    dist.destroy_process_group()
    return float(value.item())


def train(steps: int = TRAIN_STEPS) -> float:
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from runner.trainer.data import spirals
    from runner.trainer.models import MLP

    torch.set_num_threads(1)  # as torchrun sets it; submitit's local executor does not
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    data = spirals(n_samples=4000, seed=0)
    model = DDP(MLP(data.in_features, data.out_features))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    x, y = data.x_train[rank::world], data.y_train[rank::world]
    micro = 64 // world
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (micro,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    final = torch.tensor([loss.item()])
    dist.all_reduce(final)
    dist.destroy_process_group()
    return float(final.item()) / world


WORKLOADS = {"allreduce": allreduce, "train": train}


if __name__ == "__main__":
    WORKLOADS[sys.argv[1] if len(sys.argv) > 1 else "allreduce"]()
