"""Published PyTorch checkpoints into workdirs (without torch), safetensors export and import, and
the package metadata that `pip install .` reads."""

import collections
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from solar_ddpm_jax import checkpointing, convert
from tests._helpers import torch_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = 8  # The published image_size (= base width): an 8 px network of 8/16/32/32 channels.
HEADS = 4  # Fixed by the published SelfAttention.


# ------------------------------------------------------------------ torch's file layout


def write_torch_file(path, obj):
  """Writes `obj` (nested dicts of float32 arrays and plain values) as torch.save does (zip
  layout, one contiguous storage per tensor), without torch."""
  storages = {}

  def wrap(o):
    if isinstance(o, dict):
      return collections.OrderedDict((k, wrap(v)) for k, v in o.items())
    if isinstance(o, np.ndarray):
      key = str(len(storages))
      array = np.ascontiguousarray(o, np.float32)
      storages[key] = array.tobytes()
      return torch_files.contiguous(key, array)
    return o

  torch_files.write_zip(path, wrap(obj), storages)
  return str(path)


def published_state_dict(seed=0, width=WIDTH, num_classes=5, time_dim=256):
  """Random tensors under every name of the published UNet_conditional's state_dict."""
  rng = np.random.default_rng(seed)
  shapes = convert.published_shapes(width, 1, 1, num_classes, time_dim)
  return collections.OrderedDict(
      (k, (0.1 * rng.standard_normal(s)).astype(np.float32)) for k, s in shapes.items())


def published_config(width=WIDTH):
  """The test preset as the published network of `width` (faithful paper UNet)."""
  from configs import aia171
  config = aia171.get_config("test")
  m = config.model
  m.image_size = config.data.resolution = m.base_channels = width
  m.channel_mult, m.bottleneck_mult, m.num_heads = (1, 2, 4, 4), 8, HEADS
  m.attention_resolutions = (width, width // 2, width // 4, width // 8)
  m.time_embed_dim, m.faithful, m.attention_impl = 256, True, "xla"
  config.diffusion.prediction = "eps"
  config.sampling.sampler, config.sampling.num_steps = "ddpm", 2
  config.sampling.classes, config.sampling.num_per_class = "A,X", 1
  config.sampling.write_fits = False
  return config


# ------------------------------------------------------------------ an independent mapping

_BLOCK = {("maxpool_conv", "1"): "res", ("maxpool_conv", "2"): "conv", ("conv", "0"): "res",
          ("conv", "1"): "conv", ("emb_layer", "1"): "emb"}
_LAYER = {"double_conv.0": "conv1", "double_conv.1": "norm1", "double_conv.3": "conv2",
          "double_conv.4": "norm2", "ln": "ln", "ff_self.0": "ff_ln", "ff_self.1": "ff1",
          "ff_self.3": "ff2"}


def expected_leaves(sd, heads=HEADS):
  """{Flax path: array} the published tensors must become, index by index from the torch
  definitions (Conv2d [out, in, kh, kw], Linear [out, in], packed in_proj [q; k; v])."""
  out = {}
  for key, v in sd.items():
    m = re.fullmatch(r"(down\d|up\d)\.(maxpool_conv|conv|emb_layer)\.(\d)\.(.+)", key)
    block, rest = (f"{m[1]}_{_BLOCK[(m[2], m[3])]}", m[4]) if m else key.split(".", 1)
    if rest.startswith("mha."):
      c = v.shape[-1] if v.ndim == 2 else v.shape[0] // 3 if "in_proj" in rest else v.shape[0]
      dh = c // heads
      if rest == "mha.in_proj_weight":
        for i, name in enumerate(("query", "key", "value")):
          kernel = np.empty((c, heads, dh), np.float32)
          for h in range(heads):
            for d in range(dh):
              kernel[:, h, d] = v[i * c + h * dh + d, :]
          out[f"{block}/{name}/kernel"] = kernel
      elif rest == "mha.in_proj_bias":
        for i, name in enumerate(("query", "key", "value")):
          out[f"{block}/{name}/bias"] = v[i * c:(i + 1) * c].reshape(heads, dh)
      elif rest == "mha.out_proj.weight":
        kernel = np.empty((heads, dh, c), np.float32)
        for h in range(heads):
          for d in range(dh):
            kernel[h, d, :] = v[:, h * dh + d]
        out[f"{block}/out/kernel"] = kernel
      else:
        out[f"{block}/out/bias"] = v
    elif block == "label_emb":
      out["label_emb/embedding"] = v
    elif rest in ("weight", "bias"):  # emb_layer Linear, outc Conv2d(1x1).
      if rest == "bias":
        out[f"{block}/bias"] = v
      else:
        out[f"{block}/kernel"] = (np.einsum("oihw->hwio", v) if v.ndim == 4
                                  else np.einsum("oi->io", v))
    else:
      layer, param = rest.rsplit(".", 1)
      name = f"{block}/{_LAYER[layer]}"
      if param == "bias":
        out[f"{name}/bias"] = v
      elif v.ndim == 4:
        out[f"{name}/kernel"] = np.einsum("oihw->hwio", v)
      elif layer in ("ff_self.1", "ff_self.3"):
        out[f"{name}/kernel"] = np.einsum("oi->io", v)
      else:
        out[f"{name}/scale"] = v
  return out


def _restored(config, workdir, ema):
  params, step = checkpointing.restore_params_and_step(config, str(workdir), -1, ema=ema)
  return {k: np.asarray(v) for k, v in convert.flatten_tree(params).items()}, step


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A file with model and EMA weights (ema-pytorch's flat layout), converted once."""
  root = tmp_path_factory.mktemp("convert")
  model, ema = published_state_dict(0), published_state_dict(1)
  path = write_torch_file(root / "ckpt.pt", {**{f"online_model.{k}": v for k, v in model.items()},
                                             **{f"ema_model.{k}": v for k, v in ema.items()},
                                             "step": 1000})
  config = published_config()
  workdir = convert.convert_torch_checkpoint(config, path, str(root / "workdir"))
  return dict(root=root, config=config, workdir=workdir, model=model, ema=ema, path=path)


# ------------------------------------------------------------------ conversion


def test_published_shapes_are_the_published_network():
  shapes = convert.published_shapes(64, 1, 1, 5, 256)
  assert sum(int(np.prod(s)) for s in shapes.values()) == convert.PUBLISHED_NUM_PARAMS_64PX
  assert shapes["inc.double_conv.0.weight"] == (64, 1, 3, 3)
  assert shapes["up1.conv.1.double_conv.0.weight"] == (256, 512, 3, 3)  # mid = in // 2.
  wide = convert.published_shapes(128, 1, 1, 5, 256)  # The 128 px model is 128 channels wide.
  assert wide["bot2.double_conv.0.weight"] == (1024, 1024, 3, 3)
  wide = {k: np.broadcast_to(np.float32(0), s) for k, s in wide.items()}
  assert convert.infer_settings(wide) == convert.PublishedSettings(1, 1, 128, 256, 5)


def test_every_tensor_lands_at_its_flax_path_transposed(converted):
  for ema, source in ((False, converted["model"]), (True, converted["ema"])):
    got, step = _restored(converted["config"], converted["workdir"], ema)
    want = expected_leaves(source)
    assert step == 0
    assert set(got) == set(want)
    for k, v in want.items():
      assert got[k].dtype == np.float32
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  record = json.loads(open(os.path.join(converted["workdir"], "conversion.json")).read())
  assert record["published"] == dict(in_channels=1, out_channels=1, width=WIDTH, time_dim=256,
                                     num_classes=5)
  assert record["params_from"] == "model" and record["ema_params_from"] == "ema"
  saved = json.loads(open(os.path.join(converted["workdir"], "config.json")).read())
  assert saved["model"]["faithful"] is True and saved["model"]["base_channels"] == WIDTH


def _layer_norm(x, w, b):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * w + b


def _published_attention(sd, prefix, x, heads=HEADS):
  """The published SelfAttention (nn.MultiheadAttention, batch_first) in float64 numpy."""
  from scipy.special import erf
  p = {k[len(prefix) + 1:]: v.astype(np.float64) for k, v in sd.items()
       if k.startswith(prefix + ".")}
  b, t, c = x.shape
  ln = _layer_norm(x, p["ln.weight"], p["ln.bias"])
  q, k, v = np.split(ln @ p["mha.in_proj_weight"].T + p["mha.in_proj_bias"], 3, axis=-1)
  split = lambda a: a.reshape(b, t, heads, c // heads).transpose(0, 2, 1, 3)
  scores = split(q) @ split(k).transpose(0, 1, 3, 2) / np.sqrt(c // heads)
  attn = np.exp(scores - scores.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  o = (attn @ split(v)).transpose(0, 2, 1, 3).reshape(b, t, c)
  y = o @ p["mha.out_proj.weight"].T + p["mha.out_proj.bias"] + x
  ff = _layer_norm(y, p["ff_self.0.weight"], p["ff_self.0.bias"]) @ p["ff_self.1.weight"].T
  ff = ff + p["ff_self.1.bias"]
  ff = 0.5 * ff * (1 + erf(ff / np.sqrt(2)))
  return ff @ p["ff_self.3.weight"].T + p["ff_self.3.bias"] + y


def test_converted_attention_computes_the_published_attention():
  """The head split of the packed in_proj: the Flax block equals the published one."""
  from solar_ddpm_jax import unet
  sd = published_state_dict(2)
  tree = convert.to_flax_tree(sd)
  x = np.random.default_rng(3).standard_normal((2, 4, 4, 2 * WIDTH)).astype(np.float32)
  got = unet.PaperAttention(num_heads=HEADS, impl="xla").apply({"params": tree["sa1"]}, x)
  want = _published_attention(sd, "sa1", x.reshape(2, 16, 2 * WIDTH).astype(np.float64))
  np.testing.assert_allclose(np.asarray(got).reshape(2, 16, -1), want, rtol=1e-4, atol=1e-4)


def test_converted_workdir_samples(converted):
  from solar_ddpm_jax import sample
  out_dir = sample.sample_and_save(converted["config"], converted["workdir"])
  with np.load(os.path.join(out_dir, "samples.npz")) as z:
    images, labels = z["images"], z["labels"]
  assert images.shape == (2, WIDTH, WIDTH, 1) and labels.tolist() == [0, 4]
  assert np.all(np.isfinite(images)) and np.abs(images).max() <= 1.0


def test_export_import_round_trip_is_bit_exact(converted):
  from safetensors.numpy import load_file
  config, root = converted["config"], converted["root"]
  exported = convert.export_safetensors(config, converted["workdir"], str(root / "hub"))
  meta = json.loads(open(os.path.join(exported, "config.json")).read())
  assert meta["model"]["base_channels"] == WIDTH and meta["diffusion"]["prediction"] == "eps"
  assert meta["weights"] == "ema_params" and meta["class_names"] == ["A", "B", "C", "M", "X"]
  flat = load_file(os.path.join(exported, "model.safetensors"))
  assert "sa1.query.kernel" in flat and "down1_res.conv1.kernel" in flat
  ema = expected_leaves(converted["ema"])
  for k, v in ema.items():
    np.testing.assert_array_equal(flat[k.replace("/", ".")], v, err_msg=k)

  # No --config: the model, diffusion and image settings come from config.json.
  imported = convert.import_safetensors(None, exported, str(root / "imported"))
  again = convert.export_safetensors(published_config(), imported, str(root / "hub2"))
  flat2 = load_file(os.path.join(again, "model.safetensors"))
  assert set(flat2) == set(flat)
  for k in flat:
    assert flat2[k].dtype == flat[k].dtype and flat2[k].tobytes() == flat[k].tobytes(), k
  for ema_slot in (True, False):  # Both slots of the imported workdir hold the EMA weights.
    got, _ = _restored(config, imported, ema_slot)
    for k, v in ema.items():
      np.testing.assert_array_equal(got[k], v, err_msg=k)

  other = published_config()
  other.model.num_classes = 4
  with pytest.raises(convert.ConversionSettingsError, match=r"--config\.model\.num_classes=5"):
    convert.import_safetensors(other, exported, str(root / "refused"))
  assert checkpointing.latest_step(str(root / "refused")) is None


def test_refuses_writing_into_a_workdir_with_checkpoints(converted):
  with pytest.raises(convert.errors.UserError, match="already holds checkpoints"):
    convert.convert_torch_checkpoint(converted["config"], converted["path"],
                                     converted["workdir"])


# ------------------------------------------------------------------ what a file may look like


@pytest.mark.parametrize("layout", ["plain", "module", "state_dict", "flat_ema_prefix"])
def test_accepted_layouts(tmp_path, layout):
  sd, ema = published_state_dict(0), published_state_dict(1)
  prefixed = {f"module.{k}": v for k, v in sd.items()}
  obj = {"plain": sd, "module": prefixed, "state_dict": {"state_dict": prefixed, "epoch": 7},
         "flat_ema_prefix": {**{f"online_model.{k}": v for k, v in sd.items()},
                             **{f"ema_model.module.{k}": v for k, v in ema.items()}}}[layout]
  model, ema_read, _ = convert.read_torch_checkpoint(write_torch_file(tmp_path / "c.pt", obj))
  assert list(model) == list(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(model[k], v)
  if layout == "flat_ema_prefix":
    assert list(ema_read) == list(ema)
    np.testing.assert_array_equal(ema_read["outc.weight"], ema["outc.weight"])
  else:
    assert ema_read is None
  settings = convert.infer_settings(model)
  convert.check_state_dict(model, settings, "c.pt")
  convert.check_config(published_config(), settings, "c.pt")


def test_wrapped_state_dicts_give_model_and_ema():
  """Checkpoint dicts ({"model": sd, "ema_model": sd, ...}) as a reader flattens them."""
  sd, ema = published_state_dict(0), published_state_dict(1)
  flat = {**{f"model.module.{k}": v for k, v in sd.items()},
          **{f"ema_model.{k}": v for k, v in ema.items()},
          "optimizer.param_groups": np.zeros(1), "epoch": np.asarray(3)}
  model, ema_read, layout = convert.split_weight_sets(flat)
  assert list(model) == list(sd) and list(ema_read) == list(ema)
  assert "'model'" in layout and "'ema_model'" in layout
  model, ema_read, _ = convert.split_weight_sets({f"ema.{k}": v for k, v in ema.items()})
  assert list(model) == list(ema) and ema_read is None  # One set: it fills both slots.


def test_nested_checkpoint_dicts_are_read(tmp_path):
  """{"model": sd, "ema_model": sd, "epoch": n}: the model and the EMA sets are both read."""
  sd, ema = published_state_dict(0), published_state_dict(1)
  path = write_torch_file(tmp_path / "c.pt", {"model": sd, "ema_model": ema, "epoch": 3})
  model, ema_read, _ = convert.read_torch_checkpoint(path)
  assert sorted(model) == sorted(sd) and sorted(ema_read) == sorted(ema)
  for k in sd:
    np.testing.assert_array_equal(model[k], sd[k])
    np.testing.assert_array_equal(ema_read[k], ema[k])


def _refusal(tmp_path, sd, config=None):
  path = write_torch_file(tmp_path / "bad.pt", sd)
  workdir = tmp_path / "workdir"
  with pytest.raises(convert.errors.UserError) as e:
    convert.convert_torch_checkpoint(config or published_config(), path, str(workdir))
  assert checkpointing.latest_step(str(workdir)) is None  # Nothing written.
  return str(e.value)


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
  sd = published_state_dict()
  del sd["sa4.ff_self.3.bias"]
  assert re.search(r"missing tensors \(1\): sa4\.ff_self\.3\.bias", _refusal(tmp_path, sd))
  sd = published_state_dict()
  sd["sa7.ln.weight"] = np.zeros(8, np.float32)
  assert re.search(r"extra tensors \(1\): sa7\.ln\.weight", _refusal(tmp_path, sd))
  sd = published_state_dict()
  sd["up2.conv.1.double_conv.0.weight"] = np.zeros((8, 32, 3, 3), np.float32)
  assert re.search(r"misshapen tensors \(1\): up2\.conv\.1\.double_conv\.0\.weight: file "
                   r"\(8, 32, 3, 3\), expected \(16, 32, 3, 3\)", _refusal(tmp_path, sd))
  sd = published_state_dict()
  del sd["label_emb.weight"]
  assert "no label_emb" in _refusal(tmp_path, sd)
  assert "not a state dict of the published" in _refusal(tmp_path, {"weight": np.zeros(3)})


def test_a_config_of_another_network_is_refused_with_the_values_to_pass(tmp_path):
  from configs import aia171
  message = _refusal(tmp_path, published_state_dict(), aia171.get_config("paper"))
  for flag in ("--config.model.faithful=True", "--config.model.image_size=8",
               "--config.data.resolution=8", "--config.model.base_channels=8",
               "--config.model.attention_resolutions='(8, 4, 2, 1)'"):
    assert flag in message
  assert "model.num_classes" not in message  # Only what differs.
  config = published_config()
  config.diffusion.prediction = "v"
  assert "--config.diffusion.prediction=eps" in _refusal(tmp_path, published_state_dict(), config)


def test_a_file_that_is_not_a_torch_checkpoint_is_named(tmp_path):
  page = tmp_path / "ckpt.pt"
  page.write_text("<html>Not Found</html>")
  with pytest.raises(convert.TorchCheckpointError, match=r"ckpt\.pt' could not be read"):
    convert.read_torch_checkpoint(str(page))
  with pytest.raises(convert.TorchCheckpointError, match="does not exist"):
    convert.read_torch_checkpoint(str(tmp_path / "absent.pt"))


def test_command_line_refusal_exits_with_the_message(tmp_path):
  path = write_torch_file(tmp_path / "ckpt.pt", published_state_dict())
  proc = subprocess.run(
      [sys.executable, "-m", "solar_ddpm_jax.convert", "--config=configs/aia171.py:paper",
       f"--torch_checkpoint={path}", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr
  assert "error: " in proc.stderr and "--config.model.faithful=True" in proc.stderr


def test_published_shapes_are_the_torch_networks_where_torch_is_installed():
  """The tensor list the converter expects is the re-typed published network's state_dict (the
  mapping itself is checked numerically against torch's forward in test_bench_reference)."""
  torch = pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(REPO, "bench"))
  import torch_reference
  for size, width, want in ((16, 64, 64), (64, None, 64), (128, None, 128)):
    with torch.device("meta"):  # Shapes only: no memory for the 128-wide network.
      model = torch_reference.UNetConditional(image_size=size, width=width)
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sd == {k: tuple(v) for k, v in convert.published_shapes(want, 1, 1, 5, 256).items()}


# ------------------------------------------------------------------ package metadata


def _requirement_pins():
  pins = {}
  for line in open(os.path.join(REPO, "requirements.txt")):
    line = line.split("#")[0].strip()
    if "==" in line:
      name, version = line.split("==")
      pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version.strip()
  return pins


def test_pyproject_declares_the_pinned_dependencies_and_the_command():
  from packaging.requirements import Requirement
  project = tomllib.loads(open(os.path.join(REPO, "pyproject.toml")).read())["project"]
  declared = [Requirement(r) for r in project["dependencies"]]
  declared += [Requirement(r) for extra in project["optional-dependencies"].values()
               for r in extra]
  by_name = {}
  for r in declared:
    by_name.setdefault(r.name.lower().replace("_", "-"), []).append(r)
  for name, version in _requirement_pins().items():
    assert name in by_name, f"{name} (requirements.txt) is not declared in pyproject.toml"
    assert any(r.specifier.contains(version) for r in by_name[name]), (name, version)
  core = {r.name.lower().replace("_", "-") for r in map(Requirement, project["dependencies"])}
  assert {"jax", "flax", "optax", "orbax-checkpoint", "numpy", "safetensors"} <= core
  assert project["scripts"]["solar-ddpm"] == "solar_ddpm_jax.main:run"
