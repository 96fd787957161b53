"""Device mesh, shardings and multi-host start-up.

Parallelism is `jax.jit` over a `Mesh` with two axes: `data` (batch) and `fsdp` (parameters sharded
over devices, and the batch too). Multi-host jobs (TPU pods, multi-GPU nodes) call
`maybe_initialize_distributed` first; each process then feeds its own slice of the global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")  # The batch dimension is split over both axes.

_ENV_HINTS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
              "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS")
_TASK_COUNTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")  # Hints only above one task.


def _env_hint() -> str | None:
  """The first environment variable that says this is a multi-process job, if any."""
  for name in _ENV_HINTS:
    value = os.environ.get(name, "")
    if not value:
      continue
    if name in _TASK_COUNTS and value.strip().isdigit() and int(value) <= 1:
      continue  # One task: an salloc shell or `mpirun -n 1`, not a multi-process job.
    return name
  return None


# XLA:CPU flags per mesh.cpu_convolutions, for the jaxlib releases they were measured on (an
# unknown flag in XLA_FLAGS is fatal, so other releases get none).
CPU_CONVOLUTION_FLAGS = {
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
    "ynnpack": "",
}
_CPU_FLAGS_JAXLIB = ("0.10.",)


def configure_xla_cpu(mesh_config=None) -> str:
  """Adds the XLA:CPU flags of `mesh.cpu_convolutions` to XLA_FLAGS; returns what was added.

  Must run before the first JAX computation (XLA reads XLA_FLAGS once, when the backend starts);
  later it only warns. "eigen" (the default) runs convolutions on XLA:CPU's Eigen kernels rather
  than YNNPACK, which keeps the matrix products: their weight gradients are 2x faster, the paper
  train step 1.2x and the res128 one 1.4x on a 2-core AVX-512 CPU (bench/bench_train.py
  --cpu_convolutions eigen,ynnpack). Flags the user already set in XLA_FLAGS win. No effect on
  GPU or TPU.
  """
  import jaxlib
  choice = str(mesh_config.cpu_convolutions) if mesh_config is not None else "eigen"
  if choice not in CPU_CONVOLUTION_FLAGS:
    raise ValueError(f"mesh.cpu_convolutions={choice!r}: choose one of "
                     f"{', '.join(CPU_CONVOLUTION_FLAGS)}.")
  flag = CPU_CONVOLUTION_FLAGS[choice]
  current = os.environ.get("XLA_FLAGS", "")
  if not flag or flag.split("=")[0] in current:
    return ""
  if not jaxlib.__version__.startswith(_CPU_FLAGS_JAXLIB):
    logging.info("mesh.cpu_convolutions=%r not applied: measured on jaxlib %s, not %s.", choice,
                 "/".join(_CPU_FLAGS_JAXLIB), jaxlib.__version__)
    return ""
  from jax._src import xla_bridge  # Private: only touched on the releases above.
  if xla_bridge.backends_are_initialized():
    logging.warning("mesh.cpu_convolutions=%r not applied: JAX's backends already started.",
                    choice)
    return ""
  os.environ["XLA_FLAGS"] = f"{current} {flag}".strip()
  return flag


def maybe_initialize_distributed(mesh_config) -> bool:
  """Calls `jax.distributed.initialize` when the config or the environment asks for it.

  Returns True when this is a multi-process job. Must run before anything touches a device.
  """
  mode = mesh_config.distributed
  if mode == "off":
    return False
  explicit = bool(mesh_config.coordinator_address)
  hint = None if explicit else _env_hint()
  if mode == "auto" and not explicit and hint is None:
    return False
  kwargs = {}
  if explicit:
    # Unset counts (0 / -1) are None: JAX then reads them from SLURM, MPI or the TPU environment.
    num = int(mesh_config.num_processes)
    pid = int(mesh_config.process_id)
    kwargs = dict(coordinator_address=mesh_config.coordinator_address,
                  num_processes=num if num > 0 else None, process_id=pid if pid >= 0 else None)
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    if isinstance(e, RuntimeError) and "already" in str(e).lower():
      pass  # Initialised by the launcher.
    elif not explicit:
      found = f"{hint}={os.environ[hint]} says" if hint else "mesh.distributed='on' says"
      raise RuntimeError(
          f"{found} this is a multi-process job, but jax.distributed.initialize() could not find "
          f"its coordinator ({type(e).__name__}: {e}). Pass --config.mesh.coordinator_address, "
          "--config.mesh.num_processes and --config.mesh.process_id, or "
          "--config.mesh.distributed=off to run as one process.") from e
    else:
      raise RuntimeError(
          f"jax.distributed.initialize(coordinator_address={kwargs['coordinator_address']!r}, "
          f"num_processes={kwargs['num_processes']}, process_id={kwargs['process_id']}) failed "
          f"({type(e).__name__}: {e}). Where the environment (SLURM, MPI, TPU) does not give the "
          "process count and index, pass --config.mesh.num_processes and "
          "--config.mesh.process_id.") from e
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1


def create_mesh(mesh_config=None, devices=None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  fsdp = int(mesh_config.fsdp) if mesh_config is not None else 1
  data = int(mesh_config.data) if mesh_config is not None else -1
  if fsdp < 1 or (data < 1 and data != -1):
    raise ValueError(f"mesh.fsdp={fsdp} and mesh.data={data}: give positive device counts "
                     "(mesh.data=-1: all devices left over by mesh.fsdp).")
  if data == -1:
    if len(devices) % fsdp:
      raise ValueError(f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices.")
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f"mesh.data={data} x mesh.fsdp={fsdp} != {len(devices)} devices.")
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh((data, fsdp), devices=devices)
  except Exception:  # Virtual CPU devices and odd shapes: plain order.
    grid = np.asarray(devices).reshape(data, fsdp)
  return Mesh(grid, DATA_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays held whole on every device (step counters, small parameters)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 4) -> NamedSharding:
  """Sharding of a batch: the leading dimension split over (data, fsdp)."""
  return NamedSharding(mesh, P(DATA_AXES, *([None] * (ndim - 1))))


def fsdp_sharding(mesh: Mesh, shape, min_size: int = 2**14) -> NamedSharding:
  """Shards the largest dimension divisible by the fsdp axis; small arrays stay replicated."""
  n = mesh.shape["fsdp"]
  if n == 1 or int(np.prod(shape)) < min_size:
    return replicated(mesh)
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def shard_batch(mesh: Mesh, local_batch):
  """Global jax.Arrays from this process's slice of the batch (a pytree of numpy arrays)."""
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, local_batch)


def host_to_global(mesh: Mesh, x, *, replicate: bool = False) -> jax.Array:
  """A host numpy array that is the same on every process -> a global array on `mesh`.

  Batch-sharded over (data, fsdp) by default, or held whole on every device (`replicate`). Each
  process fills only its own devices, so this works on one host and across a pod alike.
  """
  x = np.asarray(x)
  target = replicated(mesh) if replicate else batch_sharding(mesh, x.ndim)
  return jax.make_array_from_callback(x.shape, target, lambda idx: x[idx])


def global_to_host(x: jax.Array) -> np.ndarray:
  """The whole of a global array as numpy on every process (an all-gather across hosts)."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def per_process_batch_size(global_batch_size: int) -> int:
  """This process's share of the global batch; raises if it does not divide evenly."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                     f"{jax.device_count()} devices.")
  return global_batch_size // jax.process_count()
