"""The per-job overhead workload: join a gloo group, all-reduce once, exit."""

import torch
import torch.distributed as dist


def allreduce() -> float:
    dist.init_process_group("gloo")
    value = torch.ones(1)
    dist.all_reduce(value)
    dist.destroy_process_group()
    return float(value.item())


if __name__ == "__main__":
    allreduce()
