"""PyTorch DistributedDataParallel job on gloo, configured as training-operator configures a PyTorchJob's pods:
`MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK` (rank 0 is the master pod, which hosts the rendezvous store).

Each rank trains the same tiny MLP for a few steps on its own synthetic shard (fixed seeds), then all-gathers its
flattened parameters and checks them bitwise against every peer's. Run locally:

    MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 WORLD_SIZE=2 RANK=0 python -m gangsched.jobs.torch_ddp   # and RANK=1

gloo picks the interface whose address the host name resolves to; in a network namespace that may be the wrong
one, so the node agent sets `GLOO_SOCKET_IFNAME`. When unset and the master is on loopback, `lo` is used.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import sys
import time
import weakref

from gangsched.jobs._common import (
    BATCH,
    DIM,
    HIDDEN,
    LR,
    STEPS,
    arm_watchdog,
    disarm_watchdog,
    log,
    run_deadline,
    startup_deadline,
    summary,
    weights_digest,
)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main() -> int:
    t0 = time.monotonic()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    master = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    deadline = startup_deadline()
    # init_process_group's timeout bounds the rendezvous; the watchdog also covers a master whose name does not
    # resolve yet and anything else before the first step (a worker without peers otherwise waits 30 min).
    arm_watchdog(deadline + 15, f"rank {rank}: waiting for {world} ranks at {master}")
    if "GLOO_SOCKET_IFNAME" not in os.environ and _loopback(os.environ["MASTER_ADDR"]):
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"

    # The master's name appears in the hosts file only once its pod runs; a worker started first would fail at
    # once in the store's connect, so wait for the name (under the watchdog) before the rendezvous.
    while True:
        try:
            socket.getaddrinfo(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
            break
        except socket.gaierror:
            time.sleep(0.5)

    import torch
    import torch.distributed as dist
    import torch.distributed.nn  # before init_process_group: see _teardown
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # several ranks share a couple of cores
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=deadline))

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's at construction)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    data = torch.Generator().manual_seed(1000 + rank)  # each rank its own shard
    true_w = torch.randn(DIM, 1, generator=torch.Generator().manual_seed(99))

    losses = []
    for step in range(STEPS):
        x = torch.randn(BATCH, DIM, generator=data)
        y = torch.tanh(x @ true_w)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # DDP all-reduces (averages) the gradients here
        opt.step()
        losses.append(loss.item())
        if step == 0:
            disarm_watchdog()
            startup_s = time.monotonic() - t0
            arm_watchdog(run_deadline(), f"rank {rank}: group formed after {startup_s:.1f}s, training")

    with torch.no_grad():
        mine = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        rows = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(rows, mine)
    identical = all(torch.equal(r, mine) for r in rows)
    mean_loss = torch.tensor([losses[-1]])
    dist.all_reduce(mean_loss)  # doubles as a final barrier: no rank leaves while a peer still gathers
    digests = [weights_digest([r.numpy()]) for r in rows]
    summary(
        job="torch_ddp", role="master" if rank == 0 else "worker", rank=rank, world=world, steps=STEPS,
        identical=identical, weights_sha256=weights_digest([mine.numpy()]), peer_digests=digests,
        loss_first=losses[0], loss_last=losses[-1], loss_last_mean=float(mean_loss) / world,
        startup_s=round(startup_s, 2), total_s=round(time.monotonic() - t0, 2),
    )
    if not identical:
        log(f"rank {rank}: parameters differ from a peer's: {digests}")
    del model, opt  # DDP's reducer holds the group too
    _teardown(rank, 0 if identical else 3)  # the all_reduce above was the last collective on every rank
    disarm_watchdog()  # armed through the teardown: a hang there still ends the process
    return 0 if identical else 3


def _teardown(rank: int, code: int) -> None:
    """Destroy the process group while the interpreter is fully alive, so its gloo threads and store go now.

    A gloo worker thread releases each finished collective's Work after the caller has already returned, and
    that release drops the tensors' Python objects, which takes the GIL. If the group (and so those threads)
    still exists when the interpreter finalizes, such a thread gets pthread_exit'ed by take_gil while inside
    C++ and the process aborts with "terminate called without an active exception" (exit 134), at random,
    after a successful run. destroy_process_group() only frees the group if nothing else references it; the
    ProcessGroup destructor then waits for the queued work, joins gloo's threads and closes the TCPStore (rank 0:
    the store server). DDP's construction imports torch.distributed.nn.functional (via torch._dynamo, FSDP,
    _shard) and its functions' defaults `group=group.WORLD` are evaluated at import: imported after
    init_process_group they would hold the default group until interpreter teardown, hence the early import.
    """
    import torch.distributed as dist

    world_pg = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    if world_pg() is not None:
        # Something (a future torch, another lazy import) still references the group: its threads would meet
        # the interpreter's finalization. Leave without it, the result already printed: no atexit work is lost.
        log(f"rank {rank}: process group outlived destroy_process_group(); exiting with os._exit({code})")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
