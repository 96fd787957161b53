"""The evaluation report as files: report.json, report.md and PNG plots, from report.run_report.

Rendering only: every number comes from `report`; what could not be computed arrives here as a
{"skipped": reason} entry and is shown with its reason.
"""

from __future__ import annotations

import json
import os

import numpy as np

from solar_ddpm_jax import FLARE_CLASSES, outputs


def _fmt(x) -> str:
  return "-" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))


def markdown(report: dict) -> str:
  """The short human-readable report."""
  lines = ["# Evaluation report", "",
           f"Preset `{report['preset']}`; {report['count_generated']} generated vs "
           f"{report['count_real']} real images of split `{report['reference_split']}`; "
           f"image shape {report['image_shape']}. Samples: {report['samples']}.", ""]
  for name, entry in report["features"].items():
    lines.append(f"## Features: {name}")
    if "skipped" in entry:
      lines += [f"Skipped: {entry['skipped']}", ""]
      continue
    s = entry["settings"]
    lines.append("Settings: " + "; ".join(f"{k}={v}" for k, v in s.items()))
    lines += ["", "| class | n real | n gen | FID [CI] | FID∞ | KID ± s.e. | precision | "
              "recall | density | coverage | NDB/K | JS |", "|" + "---|" * 12]
    for cls, m in entry.items():
      if cls == "settings":
        continue
      if "skipped" in m:
        lines.append(f"| {cls} | {m['count_real']} | {m['count_generated']} | "
                     f"skipped: {m['skipped']} |" + " |" * 8)
        continue
      ci = m.get("fid_ci")
      fid_s = _fmt(m["fid"]) + (f" [{ci['low']:.4g}, {ci['high']:.4g}]" if ci else "")
      c = m.get("clusters", {})
      k = m.get("k")  # Lowered for a class of fewer than pr_k + 1 images: another metric.
      k_s = f" (k={k})" if k is not None and k != s.get("pr_k") else ""
      lines.append(
          f"| {cls} | {m['count_real']} | {m['count_generated']} | {fid_s} | "
          f"{_fmt(m.get('fid_inf', {}).get('fid_inf'))} | {_fmt(m['kid'])} ± "
          f"{_fmt(m.get('kid_se'))} | {_fmt(m.get('precision'))}{k_s} | "
          f"{_fmt(m.get('recall'))} | {_fmt(m.get('density'))} | {_fmt(m.get('coverage'))} | "
          f"{_fmt(c.get('ndb_fraction'))} | {_fmt(c.get('js'))} |")
    lines.append("")
  phys = report["physics"]
  lines.append("## Physics (DN/s)")
  if "skipped" in phys:
    lines.append(f"Skipped: {phys['skipped']}")
  else:
    lines.append("Settings: " + "; ".join(f"{k}={v}" for k, v in phys["settings"].items()))
    lines += ["", "| class | W1 (DN/s) | brightness rel. diff | spectrum |dlog10| | "
              "slope real/gen | profile |dlog10| | bright area real/gen (px) |",
              "|" + "---|" * 7]
    for cls, p in phys.items():
      if cls == "settings":
        continue
      if "skipped" in p:
        lines.append(f"| {cls} | skipped: {p['skipped']} |" + " |" * 5)
        continue
      ps, ba = p["power_spectrum"], p["bright_area_px"]
      lines.append(
          f"| {cls} | {_fmt(p['wasserstein_dn_s'])} | "
          f"{_fmt(p['total_brightness_dn_s']['relative_difference'])} | "
          f"{_fmt(ps['mean_abs_log10_ratio'])} | {_fmt(ps['slope_real'])}/"
          f"{_fmt(ps['slope_fake'])} | {_fmt(p['radial_profile']['mean_abs_log10_ratio'])} | "
          f"{_fmt(ba['real_mean'])}/{_fmt(ba['fake_mean'])} |")
  lines += ["", "## Conditioning accuracy"]
  acc = report["conditioning_accuracy"]
  if acc is None or "skipped" in acc:
    lines.append(f"Skipped: {acc['skipped'] if acc else 'not run'}")
  else:
    lines += [f"Classifier (real images only): `{acc['classifier']}`", "",
              "| guidance w | all | " + " | ".join(FLARE_CLASSES) + " |", "|" + "---|" * 7]
    for w, row in acc["per_guidance_scale"].items():
      lines.append(f"| {w} | {_fmt(row['all'])} | "
                   + " | ".join(_fmt(row.get(c)) for c in FLARE_CLASSES) + " |")
  lines += ["", "Plots: histograms.png, spectra.png, profiles.png, samples_grid.png, "
            "metrics_table.png."]
  return "\n".join(lines) + "\n"


def _plots(report, out_dir, real, fake, config) -> list[str]:
  """The PNGs of the report in `out_dir`; their file names."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []
  phys = report["physics"]
  if phys and "skipped" not in phys:
    classes = [c for c in phys if c != "settings" and "skipped" not in phys[c]]
    for fname, key, xkey, logx in (("histograms.png", "histogram", "bin_edges_dn_s", True),
                                   ("spectra.png", "power_spectrum", "k", True),
                                   ("profiles.png", "radial_profile", "r_over_half_size", False)):
      fig, axes = plt.subplots(1, len(classes), figsize=(3.2 * len(classes), 3), squeeze=False)
      for ax, cls in zip(axes[0], classes, strict=True):
        d = phys[cls][key]
        x = np.asarray(d[xkey])
        if key == "histogram":
          x = 0.5 * (x[1:] + x[:-1])
        ax.plot(x, d["real"], label="real")
        ax.plot(x, d["fake"], label="generated")
        ax.set_yscale("log")
        if logx:
          ax.set_xscale("log")
        ax.set_title(cls)
      axes[0][0].legend()
      fig.suptitle(f"{key.replace('_', ' ')} (DN/s)")
      fig.tight_layout()
      fig.savefig(os.path.join(out_dir, fname), dpi=80)
      plt.close(fig)
      written.append(fname)
  images, labels = fake
  order = np.argsort(labels, kind="stable")
  outputs.save_class_grid(images[order], labels[order], os.path.join(out_dir, "samples_grid.png"),
                          wavelength_a=int(config.data.channels[0]))
  written.append("samples_grid.png")
  rows = []
  for name, entry in report["features"].items():
    if "skipped" in entry:
      continue
    m = entry.get("all", {})
    if "fid" in m:
      rows.append([name, f"{m['fid']:.3g}", f"{m['kid']:.3g}±{m.get('kid_se', float('nan')):.2g}",
                   _fmt(m.get("precision")), _fmt(m.get("recall")),
                   f"{entry['settings']['weights_sha256'][:10]}",
                   str(entry["settings"]["count_real"]), str(entry["settings"]["count_generated"])])
  if rows:
    fig, ax = plt.subplots(figsize=(10, 0.6 + 0.4 * len(rows)))
    ax.axis("off")
    ax.table(cellText=rows, colLabels=["extractor", "FID", "KID", "precision", "recall",
                                       "weights sha256", "n real", "n gen"], loc="center")
    ax.set_title(f"all classes; reference split {report['reference_split']}")
    fig.savefig(os.path.join(out_dir, "metrics_table.png"), dpi=100, bbox_inches="tight")
    plt.close(fig)
    written.append("metrics_table.png")
  return written


def write_report(report: dict, out_dir: str, real, fake, config) -> dict:
  """report.json, report.md and the plots in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  try:
    report["plots"] = _plots(report, out_dir, real, fake, config)
  except ImportError as e:  # No matplotlib here: the numbers are written, the plots skipped.
    report["plots"] = {"skipped": f"{type(e).__name__}: {e}"}
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, default=float)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  return report
