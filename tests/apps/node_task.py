"""A task for launch-core tests without Hydra: join the gloo group, all-reduce
rank + 1, return what this rank saw (rank 0's value is the job's result)."""

import os
import socket


def world(cfg) -> dict:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    seen = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "allreduce": total.item(),
        "hosts": hosts,
        "master_addr": os.environ.get("MASTER_ADDR"),
        "tag": cfg.tag,
    }
    dist.destroy_process_group()
    return seen
