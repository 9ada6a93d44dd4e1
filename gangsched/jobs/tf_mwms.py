"""TensorFlow MultiWorkerMirroredStrategy job, configured by `TF_CONFIG` as Kubeflow's training-operator writes it:

    {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}

Every worker trains the same tiny MLP for a few synchronous steps on its own synthetic shard (fixed seeds), then
all-gathers its flattened weights and checks them bitwise against every peer's. A custom `strategy.run` loop,
because Keras 3's `model.fit` fails under this strategy. Run locally:

    TF_CONFIG='{"cluster":{"worker":["127.0.0.1:20000","127.0.0.1:20001"]},"task":{"type":"worker","index":0}}' \\
        python -m gangsched.jobs.tf_mwms      # and the same with "index":1 in a second shell
"""

from __future__ import annotations

import os
import sys
import time

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


def main() -> int:
    t0 = time.monotonic()
    cfg = tf_config()
    workers = cfg["cluster"]["worker"]
    index = int(cfg["task"]["index"])
    # A worker whose peers never start waits in TF's collectives for up to an hour and no TF option shortens
    # that, so the process bounds it itself; disarmed once the first step (the cluster's first collective) is done.
    arm_watchdog(startup_deadline(), f"worker {index}: waiting for {len(workers)} workers")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # Several workers share a couple of cores: one thread each avoids oversubscription.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    n = strategy.num_replicas_in_sync

    with strategy.scope():
        # MEAN aggregation: each replica's update is averaged across workers before it is applied, so the
        # variables stay in sync (initial values are broadcast from worker 0).
        def var(shape: list[int], seed: int) -> tf.Variable:
            init = tf.random.stateless_normal(shape, seed=[seed, 0]) * 0.3
            return tf.Variable(init, aggregation=tf.VariableAggregation.MEAN)

        params = [var([DIM, HIDDEN], 1), var([HIDDEN], 2), var([HIDDEN, 1], 3), var([1], 4)]
    true_w = tf.random.stateless_normal([DIM, 1], seed=[99, 0])

    @tf.function
    def train_step(step: tf.Tensor) -> tf.Tensor:
        def replica_fn(step: tf.Tensor) -> tf.Tensor:
            ctx = tf.distribute.get_replica_context()
            # Each worker its own shard: the seed mixes the step and the worker's index.
            x = tf.random.stateless_normal([BATCH, DIM], seed=tf.stack([step, tf.constant(index, tf.int64)]))
            y = tf.tanh(x @ true_w)
            with tf.GradientTape() as tape:
                w1, b1, w2, b2 = params
                pred = tf.nn.relu(x @ w1 + b1) @ w2 + b2
                loss = tf.reduce_mean((pred - y) ** 2)
            for v, g in zip(params, tape.gradient(loss, params), strict=True):
                v.assign_sub(LR * g)
            return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, loss)

        return strategy.run(replica_fn, args=(step,))

    @tf.function
    def gather_weights() -> tf.Tensor:
        def replica_fn() -> tf.Tensor:
            flat = tf.concat([tf.reshape(v, [-1]) for v in params], axis=0)
            return tf.distribute.get_replica_context().all_gather(flat[tf.newaxis, :], axis=0)

        return strategy.run(replica_fn)

    def local(value: object) -> object:
        return strategy.experimental_local_results(value)[0]

    losses = []
    for step in range(STEPS):
        losses.append(float(local(train_step(tf.constant(step, tf.int64)))))
        if step == 0:
            disarm_watchdog()
            startup_s = time.monotonic() - t0
            arm_watchdog(run_deadline(), f"worker {index}: cluster formed after {startup_s:.1f}s, training")
    gathered = local(gather_weights()).numpy()  # [workers, n_params], row i from worker i
    mine = gathered[index]
    identical = bool((gathered == mine).all())
    digests = [weights_digest([row]) for row in gathered]
    summary(
        job="tf_mwms", role="worker", index=index, workers=n, steps=STEPS, identical=identical,
        weights_sha256=weights_digest([mine]), peer_digests=digests, loss_first=losses[0], loss_last=losses[-1],
        startup_s=round(startup_s, 2), total_s=round(time.monotonic() - t0, 2),
    )
    if not identical:
        log(f"worker {index}: weights differ from a peer's: {digests}")
    return 0 if identical else 3


if __name__ == "__main__":
    sys.exit(main())
