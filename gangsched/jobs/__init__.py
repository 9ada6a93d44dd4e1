"""Real distributed training jobs for the end-to-end tests and `gangsched demo`, and their Kubernetes manifests.

Each job module runs as `python -m gangsched.jobs.<name>`, configured only by the environment training-operator
gives its pods, trains a tiny model on synthetic data, checks that every worker ended with the same weights, prints
one JSON line and exits 0 (non-zero on a mismatch or when its peers miss the start-up deadline):

- `tf_mwms`: TensorFlow MultiWorkerMirroredStrategy, `TF_CONFIG` with `worker` replicas.
- `tf_ps`: TensorFlow ParameterServerStrategy, `TF_CONFIG` with `chief`, `ps` and `worker` replicas.
- `torch_ddp`: PyTorch DistributedDataParallel on gloo, `MASTER_ADDR`/`MASTER_PORT`/`WORLD_SIZE`/`RANK`.

TensorFlow and PyTorch come from the `e2e` extra; `manifests` needs neither.
"""
