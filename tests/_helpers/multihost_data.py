"""One process of a two-process CPU job whose hosts do not share a data folder.

    python -m tests._helpers.multihost_data PROCESS_ID PORT BASE_DIR OUT_PREFIX [LAYOUT]

LAYOUT "own" (default): each process gets its own data.data_dir (as on TPU VMs, where
~/tensorflow_datasets is local), builds or finds the synthetic dataset, and extracts features of the
same images over the global mesh. LAYOUT "shared_late": one data.data_dir for both, and process 1
reaches the data only after process 0 has built it (hosts that start at different times). LAYOUT
"no_manual_dir": a manual source with no dataset and no data.manual_dir; every process must stop
with the error (exit 3), none may wait for the others in a build barrier. LAYOUT "empty_manual_dir":
a manual source whose data.manual_dir holds no files, so that process 0's build fails; process 0
stops with the build's error and process 1 with one naming process 0 (both exit 3). LAYOUT
"other_settings": own data_dirs, host1's holding a dataset of other data settings (built by the
test); process 1 stops with the settings error and process 0 with one naming process 1. LAYOUT
"one_host_has_it": own data_dirs and no data.manual_dir, host0's holding the dataset (built by the
test) and host1's none; process 1 stops with the missing-dataset error and process 0 with one
naming process 1 (both exit 3; process 0 must not go on alone).
"""

import glob
import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _exited(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # Exited, not yet reaped.
  except FileNotFoundError:
    return True
  except OSError:  # No /proc: allow a moment instead.
    time.sleep(2.0)
    return True


def _stop_after_the_other(out_prefix, process_id, wait_s=60.0):
  """Exit 3, process 1 at once, process 0 (which hosts the JAX coordination service) once
  process 1 has raised and exited (or after wait_s): process 0's exit aborts a process still on
  its way to its own error, and the test could not tell that race from a process left waiting
  in a barrier."""
  if int(process_id) == 1:
    with open(f"{out_prefix}1.stopped", "w") as f:
      f.write(str(os.getpid()))
    os._exit(3)  # Without shutdown: the other process may have stopped already.
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline:
    try:
      with open(f"{out_prefix}1.stopped") as f:
        pid = int(f.read() or 0)
    except (FileNotFoundError, ValueError):
      pid = 0
    if pid and _exited(pid):
      break
    time.sleep(0.1)
  os._exit(3)


def main(process_id, port, base_dir, out_prefix, layout="own"):
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  import numpy as np

  from configs import aia171
  from solar_ddpm_jax import input_pipeline, sharding
  from solar_ddpm_jax.evaluation import features

  config = aia171.get_config("test")
  config.mesh.distributed = "on"
  config.mesh.coordinator_address = f"127.0.0.1:{port}"
  config.mesh.num_processes = 2
  config.mesh.process_id = int(process_id)
  own = ("own", "other_settings", "one_host_has_it")
  folder = f"host{process_id}" if layout in own else "shared"
  config.data.data_dir = os.path.join(base_dir, folder)
  assert sharding.maybe_initialize_distributed(config.mesh)
  if layout in ("other_settings", "one_host_has_it"):  # Datasets the test built.
    config.data.source, config.data.manual_dir = "manual", os.path.join(base_dir, "raw")
    if layout == "one_host_has_it":
      config.data.manual_dir = ""
    config.data.frame_px = config.data.synthetic.image_size
    try:
      input_pipeline.load_split_arrays(config, "train")
    except Exception as e:  # noqa: BLE001
      print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
      _stop_after_the_other(out_prefix, process_id)
    return
  if layout in ("no_manual_dir", "empty_manual_dir"):
    config.data.source = "manual"
    config.data.manual_dir = ""
    if layout == "empty_manual_dir":
      config.data.manual_dir = os.path.join(base_dir, "raw")
      os.makedirs(config.data.manual_dir, exist_ok=True)
    try:
      input_pipeline.load_split_arrays(config, "train")
    except Exception as e:  # noqa: BLE001 (the test reads each process's error)
      print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
      _stop_after_the_other(out_prefix, process_id)
    return
  if layout == "shared_late" and int(process_id) == 1:  # Until TFDS has moved the finished build
    while not [p for p in glob.glob(os.path.join(config.data.data_dir, "**", "dataset_info.json"),
                                    recursive=True) if "incomplete" not in p]:  # into place.
      time.sleep(0.2)
  arrays = input_pipeline.load_split_arrays(config, "train")
  images = arrays["image"][:13]
  w = np.linspace(-1.0, 1.0, images[0].size * 3, dtype=np.float32).reshape(-1, 3)
  toy = features.Extractor("toy", lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], {"w": w},
                           "toy", "0" * 64, "none")
  feats = features.extract(toy, images, batch_size=4, mesh=sharding.create_mesh(config.mesh))
  np.savez(f"{out_prefix}{process_id}.npz", image=arrays["image"],
           flare_class=arrays["flare_class"], features=feats, w=w)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
