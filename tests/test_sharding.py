"""Start-up of multi-process jobs and mesh settings."""

import jax
import ml_collections
import pytest

from solar_ddpm_jax import sharding


def _mesh(**kw):
  return ml_collections.ConfigDict({"distributed": "auto", "coordinator_address": "",
                                    "num_processes": 1, "process_id": 0, **kw})


@pytest.fixture
def no_hints(monkeypatch):
  for name in sharding._ENV_HINTS:
    monkeypatch.delenv(name, raising=False)
  calls = []

  def initialize(**kwargs):
    calls.append(kwargs)
    raise ValueError("coordinator_address should be defined.")  # What JAX says without one.
  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  return monkeypatch, calls


def test_one_task_under_slurm_or_mpi_runs_as_one_process(no_hints):
  monkeypatch, calls = no_hints
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.setenv(name, "1")  # An salloc shell, `mpirun -n 1`.
  assert sharding.maybe_initialize_distributed(_mesh()) is False
  assert calls == []


def test_a_multi_task_job_without_a_coordinator_says_what_to_pass(no_hints):
  monkeypatch, calls = no_hints
  monkeypatch.setenv("SLURM_NTASKS", "4")
  with pytest.raises(RuntimeError, match="SLURM_NTASKS=4.*mesh.coordinator_address.*"
                                         "mesh.distributed=off"):
    sharding.maybe_initialize_distributed(_mesh())
  assert calls == [{}]
  assert sharding.maybe_initialize_distributed(_mesh(distributed="off")) is False


def test_a_coordinator_address_alone_leaves_the_counts_to_the_environment(no_hints):
  monkeypatch, calls = no_hints
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  sharding.maybe_initialize_distributed(_mesh(coordinator_address="10.0.0.1:1234",
                                              num_processes=0, process_id=-1))
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=None,
                        process_id=None)]


def test_a_failed_explicit_start_names_the_settings_to_pass(no_hints):
  _, calls = no_hints  # initialize raises as JAX does without enough information.
  with pytest.raises(RuntimeError, match=r"process_id=None\) failed.*--config.mesh.num_processes"):
    sharding.maybe_initialize_distributed(_mesh(coordinator_address="10.0.0.1:1234",
                                                num_processes=0, process_id=-1))
  assert calls[0]["coordinator_address"] == "10.0.0.1:1234"


def test_mesh_sizes_must_be_positive():
  for fsdp, data in ((0, -1), (-1, -1), (1, 0)):
    with pytest.raises(ValueError, match="positive device counts"):
      sharding.create_mesh(ml_collections.ConfigDict(dict(fsdp=fsdp, data=data)))
  assert sharding.create_mesh(ml_collections.ConfigDict(dict(fsdp=1, data=-1))).size == \
      jax.device_count()
