"""Inception V3 (pytorch-fid) weight loading in the published layouts, and its numerics."""

import pickle

import jax
import numpy as np
import pytest

from solar_ddpm_jax import sharding
from solar_ddpm_jax.evaluation import features, inception, weights

# Tensors of pt_inception-2015-12-05-6726825d.pth as published (name: torch shape).
PUBLISHED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch3x3dbl_3.bn.weight": (96,),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.bn.running_mean": (192,),
}


def _torch_shapes():
  return {inception.torch_name(k): inception.torch_shape(k, s)
          for k, s in inception.expected_flat_shapes().items()}


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in _torch_shapes().items():
    v = rng.standard_normal(shape, dtype=np.float32)
    sd[name] = np.abs(v) + 0.5 if name.endswith("running_var") else v
  sd["fc.weight"] = rng.standard_normal((1008, 2048), dtype=np.float32)  # Unused by pool3.
  sd["fc.bias"] = np.zeros(1008, np.float32)
  return sd


@pytest.fixture(scope="module")
def state_dict():
  return _random_state_dict()


def _assert_landed(params, sd):
  flat = weights.flatten(params)
  assert set(flat) == set(inception.expected_flat_shapes())
  for k, v in flat.items():
    ref = sd[inception.torch_name(k)]
    if k.endswith("conv/kernel"):
      ref = ref.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(v, ref, err_msg=k)


def test_network_has_the_published_tensors():
  shapes = _torch_shapes()
  assert len(shapes) == 94 * 5  # 94 BasicConv2d: conv weight + 4 batch-norm tensors.
  for name, shape in PUBLISHED.items():
    assert shapes[name] == shape, name
  params = sum(int(np.prod(s)) for k, s in shapes.items() if "running" not in k)
  assert params == 21_785_568  # torchvision inception_v3 without fc and aux head.


@pytest.mark.parametrize("zip_format", [True, False])
def test_pth_loads_without_torch(tmp_path, state_dict, zip_format):
  torch = pytest.importorskip("torch", reason="torch writes the .pth fixture")
  path = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
  torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
  _assert_landed(inception.load_inception_params(path), state_dict)


def test_jax_fid_pickle_and_npz_load(tmp_path, state_dict):
  params = inception.params_from_torch(state_dict)
  pkl = tmp_path / "inception_v3_weights_fid.pickle"
  tree = dict(params, fc={"kernel": state_dict["fc.weight"].T, "bias": state_dict["fc.bias"]})
  pkl.write_bytes(pickle.dumps(tree))
  _assert_landed(inception.load_inception_params(str(pkl)), state_dict)
  npz = tmp_path / "inception.npz"
  np.savez(npz, **weights.flatten(params))
  _assert_landed(inception.load_inception_params(str(npz)), state_dict)
  wrapped = tmp_path / "variables.pickle"
  wrapped.write_bytes(pickle.dumps({"params": params}))
  _assert_landed(inception.load_inception_params(str(wrapped)), state_dict)


def test_missing_and_misshapen_tensors_are_named(state_dict):
  sd = dict(state_dict)
  del sd["Mixed_6c.branch7x7_3.bn.running_mean"]
  match = r"missing.*Mixed_6c\.branch7x7_3\.bn\.running_mean"
  with pytest.raises(weights.WeightError, match=match):
    inception.params_from_torch(sd)
  sd = dict(state_dict)
  sd["Mixed_7b.branch1x1.conv.weight"] = np.zeros((320, 1280, 3, 3), np.float32)
  with pytest.raises(weights.WeightError, match=r"misshapen.*Mixed_7b\.branch1x1\.conv\.weight"):
    inception.params_from_torch(sd)


def test_a_weight_file_of_another_format_says_what_was_expected(tmp_path):
  page = tmp_path / "inception_v3_weights_fid.pickle"  # A download page saved in its place.
  page.write_text("<!DOCTYPE html><html><body>Dropbox</body></html>")
  pth = tmp_path / "pt_inception.pth"
  pth.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # safetensors bytes, not torch.
  for path in (page, pth):
    with pytest.raises(weights.WeightError) as e:
      inception.load_inception_params(str(path))
    msg = str(e.value)
    assert str(path) in msg and "could not be read as pt_inception-2015-12-05" in msg
    assert "--config.evaluation.inception_weights=" in msg and "github.com/mseitzer" in msg
  with pytest.raises(FileNotFoundError, match="is a directory, not a weight file"):
    inception.load_inception_params(str(tmp_path))


def test_imagenet_inception_weights_are_refused(state_dict):
  # torchvision's inception_v3_google weights have the same trunk but a 1000-class head.
  sd = dict(state_dict, **{"fc.weight": np.zeros((1000, 2048), np.float32),
                          "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  with pytest.raises(weights.WeightError, match=r"ImageNet head.*pt_inception-2015-12-05"):
    inception.params_from_torch(sd)


def test_multichannel_images_use_their_first_channel():
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(inception.preprocess(x)),
                                np.asarray(inception.preprocess(x[..., :1])))


def test_missing_file_says_what_where_and_which_key(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    inception.load_inception_params(str(tmp_path / "nope.pth"))
  msg = str(e.value)
  assert "nope.pth" in msg and "pt_inception-2015-12-05-6726825d.pth" in msg
  assert "https://github.com/mseitzer/pytorch-fid/releases" in msg
  assert "config.evaluation.inception_weights" in msg


def _torch_basic(torch, sd, prefix, x, padding=0, stride=1):
  f = torch.nn.functional
  w = torch.from_numpy(sd[f"{prefix}.conv.weight"])
  y = f.conv2d(x, w, stride=stride, padding=padding)
  y = f.batch_norm(y, torch.from_numpy(sd[f"{prefix}.bn.running_mean"]),
                   torch.from_numpy(sd[f"{prefix}.bn.running_var"]),
                   torch.from_numpy(sd[f"{prefix}.bn.weight"]),
                   torch.from_numpy(sd[f"{prefix}.bn.bias"]), eps=1e-3)
  return f.relu(y)


def test_fid_inception_blocks_match_torch(state_dict):
  """Mixed_5b (FIDInceptionA) and Mixed_7c (FIDInceptionE_2) against torch.nn.functional."""
  torch = pytest.importorskip("torch", reason="torch is the reference")
  f = torch.nn.functional
  params = inception.params_from_torch(state_dict)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 192, 7, 9), dtype=np.float32)
  t = torch.from_numpy(x)
  b = lambda n, inp, p=0: _torch_basic(torch, state_dict, f"Mixed_5b.{n}", inp, p)  # noqa: E731
  pool = f.avg_pool2d(t, 3, 1, 1, count_include_pad=False)
  ref = torch.cat([b("branch1x1", t), b("branch5x5_2", b("branch5x5_1", t), 2),
                   b("branch3x3dbl_3", b("branch3x3dbl_2", b("branch3x3dbl_1", t), 1), 1),
                   b("branch_pool", pool)], 1).numpy().transpose(0, 2, 3, 1)
  ours = inception.InceptionA(32).apply({"params": params["Mixed_5b"]}, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())

  x = rng.standard_normal((1, 2048, 4, 5), dtype=np.float32)
  t = torch.from_numpy(x)
  b = lambda n, inp, p=0: _torch_basic(torch, state_dict, f"Mixed_7c.{n}", inp, p)  # noqa: E731
  b3 = b("branch3x3_1", t)
  bd = b("branch3x3dbl_2", b("branch3x3dbl_1", t), 1)
  ref = torch.cat([b("branch1x1", t),
                   b("branch3x3_2a", b3, (0, 1)), b("branch3x3_2b", b3, (1, 0)),
                   b("branch3x3dbl_3a", bd, (0, 1)), b("branch3x3dbl_3b", bd, (1, 0)),
                   b("branch_pool", f.max_pool2d(t, 3, 1, 1))], 1).numpy().transpose(0, 2, 3, 1)
  ours = inception.InceptionE(max_pool=True).apply({"params": params["Mixed_7c"]},
                                                   x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_preprocess_tiles_and_resizes_like_torch():
  torch = pytest.importorskip("torch", reason="torch is the reference")
  x = np.random.default_rng(0).uniform(-1.2, 1.2, (2, 16, 16, 1)).astype(np.float32)
  ours = np.asarray(inception.preprocess(x))
  assert ours.shape == (2, 299, 299, 3)
  t = torch.from_numpy(np.clip(x, -1, 1).transpose(0, 3, 1, 2)).repeat(1, 3, 1, 1)
  ref = torch.nn.functional.interpolate(t, size=(299, 299), mode="bilinear", align_corners=False)
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_features_identical_on_1_and_8_devices(state_dict):
  ext = features.Extractor("inception", lambda p, x: inception.apply_features(p, x, size=75),
                           inception.params_from_torch(state_dict), "w.pth", "0", "test")
  images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 1)).astype(np.float32)
  one = features.extract(ext, images, batch_size=8,
                         mesh=sharding.create_mesh(devices=jax.devices()[:1]))
  eight = features.extract(ext, images, batch_size=8, mesh=sharding.create_mesh())
  assert one.shape == (8, 2048)
  np.testing.assert_array_equal(one, eight)


def _write_pth_without_torch(path, state_dict, monkeypatch):
  """Writes torch's zip layout (archive/data.pkl + archive/data/<key>) with stand-in torch names."""
  import collections
  import sys
  import types
  import zipfile

  fake_torch = types.ModuleType("torch")
  fake_utils = types.ModuleType("torch._utils")

  class FloatStorage:
    pass
  FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

  def _rebuild_tensor_v2(*args):
    return args
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  fake_torch.FloatStorage = FloatStorage
  fake_torch._utils = fake_utils
  fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  monkeypatch.setitem(sys.modules, "torch._utils", fake_utils)

  class Storage:
    def __init__(self, key, array):
      self.key, self.array = key, array

  class Tensor:
    def __init__(self, storage, shape):
      self.storage, self.shape = storage, shape

    def __reduce__(self):
      stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
      return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), stride, False,
                                   collections.OrderedDict()))

  class Writer(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ("storage", FloatStorage, obj.key, "cpu", obj.array.size)
      return None

  storages = {}
  obj = collections.OrderedDict()
  for i, (k, v) in enumerate(state_dict.items()):
    storages[str(i)] = np.ascontiguousarray(v, np.float32)
    obj[k] = Tensor(Storage(str(i), storages[str(i)]), v.shape)
  import io
  buf = io.BytesIO()
  Writer(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    for key, arr in storages.items():
      zf.writestr(f"archive/data/{key}", arr.tobytes())


def test_pth_written_without_torch_loads(tmp_path, state_dict, monkeypatch):
  path = str(tmp_path / "handmade.pth")
  _write_pth_without_torch(path, state_dict, monkeypatch)
  monkeypatch.undo()
  _assert_landed(inception.load_inception_params(path), state_dict)
