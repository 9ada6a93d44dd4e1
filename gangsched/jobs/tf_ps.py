"""TensorFlow parameter-server job (ParameterServerStrategy), configured by `TF_CONFIG` as training-operator writes
it for a TFJob with Chief, PS and Worker replicas:

    {"cluster": {"chief": [...], "ps": [...], "worker": [...]}, "task": {"type": "chief"|"ps"|"worker", "index": i}}

The chief runs a `ClusterCoordinator` that schedules a few training steps of a tiny MLP on the workers, the
variables living on the ps tasks. At the end every worker reads all variables from the ps and the chief checks the
readings bitwise against its own: that is the job's result (chief's exit code and JSON line).

ps and worker processes are plain `tf.distribute.Server`s, which never exit on their own. They exit 0 once the
chief's gRPC port, which they first saw open, has stayed closed for a few seconds: the chief is the only client of
the cluster, so once it is gone nothing can use them again. This needs no extra port, no shared file and no
cooperation from a chief that crashed (a done flag written on the ps would leave them running forever then), and
it is what training-operator's default success policy means too: the job's outcome is the chief's. A ps/worker
whose chief never shows up exits 1 at the start-up deadline.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

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
    tf_config,
    weights_digest,
)

POLL_SECONDS = 0.5
GONE_AFTER = 6  # consecutive refused connections (3 s) before the chief counts as gone, not restarting a socket


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def serve(cfg: dict[str, Any], role: str, index: int) -> int:
    t0 = time.monotonic()
    chief = cfg["cluster"]["chief"][0]
    arm_watchdog(startup_deadline(), f"{role} {index}: waiting for the chief at {chief}")
    # As TF's PS tutorial advises: RPCs from the coordinator fail fast instead of retrying inside the server.
    os.environ["GRPC_FAIL_FAST"] = "use_caller"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # See the chief up before serving: it cannot train without us, so it cannot have come and gone meanwhile.
    # (Serving first, a fast chief could finish before our first look, and we would wait for it for ever.)
    while not _port_open(chief):
        time.sleep(POLL_SECONDS)
    tf.distribute.Server(
        resolver.cluster_spec(), job_name=role, task_index=index, protocol=resolver.rpc_layer or "grpc", start=True
    )
    disarm_watchdog()
    seen_s = time.monotonic() - t0
    arm_watchdog(run_deadline(), f"{role} {index}: chief up after {seen_s:.1f}s, serving")
    refused = 0
    while refused < GONE_AFTER:
        time.sleep(POLL_SECONDS)
        refused = 0 if _port_open(chief) else refused + 1
    summary(job="tf_ps", role=role, index=index, exit="chief gone", startup_s=round(seen_s, 2),
            total_s=round(time.monotonic() - t0, 2))
    # The server has no clean stop; skip interpreter teardown, which could block on its threads.
    os._exit(0)


def coordinate(cfg: dict[str, Any]) -> int:
    t0 = time.monotonic()
    n_workers, n_ps = len(cfg["cluster"].get("worker", [])), len(cfg["cluster"].get("ps", []))
    arm_watchdog(startup_deadline(), f"chief: waiting for {n_ps} ps and {n_workers} workers")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)

    with strategy.scope():  # variables are placed round-robin on the ps tasks
        params = [
            tf.Variable(tf.random.stateless_normal(shape, seed=[seed, 0]) * 0.3)
            for seed, shape in enumerate([[DIM, HIDDEN], [HIDDEN], [HIDDEN, 1], [1]], start=1)
        ]
    true_w = tf.random.stateless_normal([DIM, 1], seed=[99, 0])

    @tf.function
    def train_step(step: tf.Tensor) -> tf.Tensor:
        def replica_fn(step: tf.Tensor) -> tf.Tensor:
            x = tf.random.stateless_normal([BATCH, DIM], seed=tf.stack([step, tf.constant(7, tf.int64)]))
            y = tf.tanh(x @ true_w)
            with tf.GradientTape() as tape:
                w1, b1, w2, b2 = params
                pred = tf.nn.relu(x @ w1 + b1) @ w2 + b2
                loss = tf.reduce_mean((pred - y) ** 2)
            for v, g in zip(params, tape.gradient(loss, params), strict=True):
                v.assign_sub(LR * g)
            return loss

        return strategy.run(replica_fn, args=(step,))

    first = coordinator.schedule(train_step, args=(tf.constant(0, tf.int64),))
    coordinator.join()
    disarm_watchdog()
    startup_s = time.monotonic() - t0
    arm_watchdog(run_deadline(), f"chief: cluster formed after {startup_s:.1f}s, training")
    results = [first] + [coordinator.schedule(train_step, args=(tf.constant(s, tf.int64),)) for s in range(1, STEPS)]
    coordinator.join()
    losses = [float(r.fetch()) for r in results]

    def flat() -> tf.Tensor:
        return tf.concat([tf.reshape(tf.identity(v), [-1]) for v in params], axis=0)

    mine = flat().numpy()
    readings = []
    for i in range(n_workers):
        # Eager ops under a remote device run on that worker: it pulls every variable from the ps.
        with tf.device(f"/job:worker/replica:0/task:{i}"):
            readings.append(flat().numpy())
    identical = all((r == mine).all() for r in readings)
    digests = [weights_digest([r]) for r in readings]
    summary(
        job="tf_ps", role="chief", index=0, workers=n_workers, ps=n_ps, steps=STEPS, identical=identical,
        weights_sha256=weights_digest([mine]), worker_digests=digests, loss_first=losses[0], loss_last=losses[-1],
        startup_s=round(startup_s, 2), total_s=round(time.monotonic() - t0, 2),
    )
    if not identical:
        log(f"chief: a worker read different variables: {digests} vs {weights_digest([mine])}")
    # Exit without TF's teardown: its closing of the remote eager contexts can block, and the ps/workers
    # watch this process's port to know that the job is over.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if identical else 3)


def main() -> int:
    cfg = tf_config()
    role, index = cfg["task"]["type"], int(cfg["task"]["index"])
    if role == "chief":
        return coordinate(cfg)
    if role in ("ps", "worker"):
        return serve(cfg, role, index)
    raise SystemExit(f"tf_ps: unsupported task type {role!r} (chief, ps or worker)")


if __name__ == "__main__":
    sys.exit(main())
