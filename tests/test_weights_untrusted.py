"""Hostile weight files: they can neither run code nor make the loaders read outside their bytes.

Each crafted file goes through the loader the evaluation uses (`load_inception_params`,
`load_clip_params`) in a subprocess, so a loader that crashes fails the test instead of pytest.
"""

import collections
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from solar_ddpm_jax.errors import UserError
from solar_ddpm_jax.evaluation import weights
from tests._helpers import torch_files as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "Conv2d_1a_3x3.conv.weight"  # A tensor name of the published Inception file.

# Runs every case in one interpreter; one JSON line per case, whatever the loader does.
_RUNNER = """
import json, sys
from solar_ddpm_jax.evaluation import clip, inception, weights
for case, loader, path in json.loads(sys.argv[1]):
  load = inception.load_inception_params if loader == "inception" else clip.load_clip_params
  try:
    load(path)
    out = {"raised": None, "message": ""}
  except BaseException as e:
    out = {"raised": type(e).__name__, "weight_error": isinstance(e, weights.WeightError),
           "message": str(e)}
  print("CASE " + json.dumps(dict(out, case=case)), flush=True)
"""


class _Touch:
  """Pickles as os.system("touch <marker>"): what a hostile .pickle would carry."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _floats(n):
  return np.arange(n, dtype=np.float32).tobytes()


def _hostile_files(d):
  """{case: (loader, path, words its error must name)} and the marker files none may create."""
  cases, markers = {}, []

  def marker(case):
    markers.append(os.path.join(d, f"ran_{case}"))
    return markers[-1]

  def zip_pth(case, obj, storages, *words):
    path = os.path.join(d, f"{case}.pth")
    tf.write_zip(path, obj, storages)
    cases[case] = ("inception", path, words)

  def legacy_pth(case, obj, storages, *words, **kw):
    path = os.path.join(d, f"{case}.pth")
    tf.write_legacy(path, obj, storages, **kw)
    cases[case] = ("inception", path, words)

  # Code in the pickles: jax-fid's .pickle, a zip .pth's data.pkl, a legacy .pth's header and
  # storage-key pickles, and state set on a function the format may call.
  path = os.path.join(d, "reduce_os_system.pickle")
  with open(path, "wb") as f:
    pickle.dump({"Conv2d_1a_3x3": {"conv": {"kernel": _Touch(marker("reduce"))}}}, f)
  cases["reduce_os_system"] = ("inception", path, (f"{os.system.__module__}.system",))
  path = os.path.join(d, "builtins_exec.pickle")
  code = f"open({marker('exec')!r}, 'w').close()"
  with open(path, "wb") as f:
    f.write(tf.dumps({"Mixed_5b": tf.Call(tf.Global("builtins", "exec"), code)}, protocol=4))
  cases["builtins_exec"] = ("inception", path, ("builtins.exec",))
  touch = tf.Call(tf.Global("os", "system"), f"touch {marker('zip')}")
  zip_pth("zip_data_pkl_global", {KEY: touch}, {}, "os.system")
  touch = tf.Call(tf.Global("os", "system"), f"touch {marker('header')}")
  legacy_pth("legacy_header_global", {}, {}, "os.system", sys_info={"little_endian": touch})
  touch = tf.Call(tf.Global("os", "system"), f"touch {marker('keys')}")
  legacy_pth("legacy_key_list_global", {}, {}, "os.system", keys=[touch])
  rebuild = tf.Global("torch._utils", "_rebuild_parameter")
  zip_pth("state_on_a_function", {KEY: tf.Build(rebuild, {"__defaults__": (1,)})}, {},
          "function")

  # Tensors outside their storage (4 float32 elements).
  for case, (offset, size, stride) in {
      "offset_past_storage": (1000, (4,), (1,)),
      "size_past_storage": (0, (1 << 20,), (1,)),
      "stride_past_storage": (0, (2, 2), (1 << 30, 1)),
      "negative_stride": (3, (4,), (-1,)),
      "negative_offset": (-2, (4,), (1,)),
      "overlapping_strides": (0, (1 << 16, 4), (0, 1)),
  }.items():
    zip_pth(case, {KEY: tf.tensor("0", 4, offset, size, stride)}, {"0": _floats(4)}, KEY)
  legacy_pth("legacy_past_storage", {KEY: tf.tensor("0", 4, 2, (4,), (1,), legacy=True)},
             {"0": (4, _floats(4))}, KEY)

  # Storages that do not hold what the pickle declares; truncated archives and records.
  zip_pth("zip_storage_shorter", {KEY: tf.tensor("0", 1 << 20, 0, (1 << 20,), (1,))},
          {"0": _floats(4)}, "storage '0'")
  zip_pth("zip_storage_ragged", {KEY: tf.tensor("0", 4, 0, (4,), (1,))},
          {"0": _floats(4)[:-2]}, "storage '0'")
  legacy_pth("legacy_record_shorter",
             {KEY: tf.tensor("0", 1 << 20, 0, (1 << 20,), (1,), legacy=True)},
             {"0": (4, _floats(4))}, "storage '0'")
  legacy_pth("legacy_file_ends_early",
             {KEY: tf.tensor("0", 1 << 20, 0, (1 << 20,), (1,), legacy=True)},
             {"0": (1 << 20, _floats(4))}, "storage '0'")
  whole = os.path.join(d, "whole.pth")
  tf.write_state_dict(whole, {KEY: np.ones((32, 3, 3, 3), np.float32)})
  path = os.path.join(d, "truncated_zip.pth")
  with open(whole, "rb") as f, open(path, "wb") as g:
    g.write(f.read()[:2000])
  cases["truncated_zip"] = ("inception", path, ("zip",))

  # CLIP's safetensors: a tensor whose data offsets run past the file's bytes.
  path = os.path.join(d, "past_buffer.safetensors")
  header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}})
  with open(path, "wb") as f:
    f.write(len(header).to_bytes(8, "little") + header.encode() + _floats(4))
  cases["safetensors_past_buffer"] = ("clip", path, ())
  return cases, markers


def test_hostile_weight_files_are_refused_without_running_or_crashing(tmp_path):
  cases, markers = _hostile_files(str(tmp_path))
  argv = json.dumps([(case, loader, path) for case, (loader, path, _) in cases.items()])
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  run = subprocess.run([sys.executable, "-c", _RUNNER, argv], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=600)
  ran = [os.path.basename(m) for m in markers if os.path.exists(m)]
  assert not ran, f"weight files ran commands: {ran}"
  assert run.returncode == 0, f"the loader crashed (exit {run.returncode}):\n{run.stderr[-3000:]}"
  results = {r["case"]: r for r in (json.loads(line[5:]) for line in run.stdout.splitlines()
                                    if line.startswith("CASE "))}
  assert set(results) == set(cases), run.stderr[-3000:]
  for case, (_, path, words) in cases.items():
    r = results[case]
    assert r["raised"] and r["weight_error"], (case, r)
    for word in (os.path.basename(path), *words):
      assert word in r["message"], (case, word, r["message"])


def test_legitimate_torch_files_load_to_the_same_arrays(tmp_path):
  arrays = {"conv.weight": np.random.default_rng(0).standard_normal((4, 3, 2, 2), np.float32),
            "bn.running_var": np.arange(4, dtype=np.float64),
            "bn.num_batches_tracked": np.array(7, np.int64),
            "mask": np.array([0, 1, 255], np.uint8),
            "empty": np.zeros((0, 3), np.float32)}
  for legacy in (False, True):
    path = str(tmp_path / f"state_{legacy}.pth")
    tf.write_state_dict(path, arrays, legacy=legacy)
    loaded = weights.load_torch_state_dict(path)
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
      assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
      np.testing.assert_array_equal(loaded[k], v, err_msg=k)
  # Views of one storage: a transposed slice at an offset and the whole, in a state_dict wrapper.
  storage = np.arange(20, dtype=np.float32)
  obj = {"state_dict": collections.OrderedDict(
      view=tf.tensor("0", 20, 2, (3, 4), (1, 3)), whole=tf.tensor("0", 20, 0, (20,), (1,)))}
  path = str(tmp_path / "views.pth")
  tf.write_zip(path, obj, {"0": storage.tobytes()})
  loaded = weights.load_torch_state_dict(path)
  np.testing.assert_array_equal(loaded["view"], storage[2:14].reshape(4, 3).T)
  np.testing.assert_array_equal(loaded["whole"], storage)
  # A checkpoint {"model": state dict, "ema": [tensor]}: tensors one level down are read too.
  for legacy in (False, True):
    path = str(tmp_path / f"nested_{legacy}.pth")
    obj = {"model": {"w": tf.tensor("0", 20, 0, (4, 5), (5, 1), legacy=legacy)},
           "ema": [tf.tensor("0", 20, 5, (5,), (1,), legacy=legacy)], "epoch": 3}
    if legacy:
      tf.write_legacy(path, obj, {"0": (20, storage.tobytes())})
    else:
      tf.write_zip(path, obj, {"0": storage.tobytes()})
    loaded = weights.load_torch_state_dict(path)
    np.testing.assert_array_equal(loaded["model"].item()["w"], storage.reshape(4, 5))
    np.testing.assert_array_equal(loaded["ema"], storage[None, 5:10])
    assert loaded["epoch"] == 3


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_legitimate_pickles_and_npz_load_to_the_same_arrays(tmp_path, protocol):
  rng = np.random.default_rng(1)
  tree = {"Mixed_5b": collections.OrderedDict(
              conv={"kernel": rng.standard_normal((1, 1, 3, 2), np.float32)},
              bn={"mean": np.asfortranarray(rng.standard_normal((2, 3))).astype(">f8")}),
          "fc": {"bias": np.arange(3, dtype=np.int64), "half": np.ones(2, np.float16),
                 "flags": np.array([True, False]), "scale": np.float32(0.5)}}
  data = pickle.dumps(tree, protocol=protocol)
  path = tmp_path / "inception_v3_weights_fid.pickle"
  path.write_bytes(data)
  npz = tmp_path / "tree.npz"
  np.savez(npz, **weights.flatten(tree))
  # What pickle and numpy themselves make of them (numpy's own unpickling makes byte order native).
  for got, ref in ((weights.load_numpy_tree(str(path)), weights.flatten(pickle.loads(data))),
                   (weights.load_numpy_tree(str(npz)), weights.flatten(tree))):
    assert set(got) == set(ref)
    for k, v in ref.items():
      assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
      np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_weight_errors_are_user_errors_and_value_errors():
  assert issubclass(weights.WeightError, UserError)
  assert issubclass(weights.WeightError, ValueError)
