"""The trainer-speed reference: a minimal hand-written DDP loop over the same model,
data and global batch as runner's default experiment. Prints samples per second."""

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from runner.trainer.data import spirals
from runner.trainer.models import MLP

parser = argparse.ArgumentParser()
parser.add_argument("--n-samples", type=int, default=20000)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

world = int(os.environ.get("WORLD_SIZE", 1))
rank = int(os.environ.get("RANK", 0))
if world > 1:
    dist.init_process_group("gloo")
torch.manual_seed(0)
data = spirals(n_samples=args.n_samples, seed=0)
model = MLP(data.in_features, data.out_features)
ddp = DDP(model) if world > 1 else model
opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
micro = args.batch_size // world
x, y = data.x_train[rank::world], data.y_train[rank::world]
steps = len(x) // micro
started = time.perf_counter()
for epoch in range(args.epochs):
    g = torch.Generator().manual_seed(epoch)
    order = torch.randperm(len(x), generator=g)
    for s in range(steps):
        idx = order[s * micro : (s + 1) * micro]
        loss = F.cross_entropy(ddp(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
elapsed = time.perf_counter() - started
if rank == 0:
    print(f"samples_per_s={steps * micro * world * args.epochs / elapsed:.1f}")
if world > 1:
    dist.destroy_process_group()
