"""The data build: files/s and MB/s of one process, the process pool and Beam's DirectRunner.

  python bench/bench_build.py [--quick] [--num_files 48] [--image_size 4096] [--cases one,pool]

On a synthetic archive of full-disc 171 A FITS files written by the benchmark (Rice-compressed, as
AIA ships them: 4096x4096 int16 with photon noise, ~12 MB each; kept in --archive_dir for later
runs), each case builds the aia_flares dataset in its own process:
  - 1 process (num_workers=1), the process pool (num_workers=0: all cores, max_in_flight frames
    decoded at once at most) and Beam (the DirectRunner's batch engine, FnApiRunner, with one SDK
    worker process per core), all with the build cache off;
  - the pool with the build cache: a cold build without the latest files, the rebuild after they
    arrive (only they are decoded), and a rebuild with nothing new.
files/s and MB/s count the FITS files (bytes on disk) of the build over its wall time (headers,
labels, preprocessing, writing; pool and Beam worker start-up included), after an untimed small
build in the same process (imports); CPU s is that of all its processes (on a machine shared with
other work, CPU s / wall s shows how many cores the build actually got). Peak memory is the
largest sum of the resident memory of the case's process and all its children (sampled every
20 ms), next to the peaks of the main process (exact) and of the largest worker (pool or Beam SDK
worker process; sampled). Prints a table with ratios against the 1-process build; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = ("one", "pool", "beam", "cache")


def write_archive(out_dir: str, num_files: int, image_size: int, seed: int = 0) -> None:
  """num_files Rice-compressed image_size^2 171 A FITS files (rendered at image_size / 4 and
  repeated, plus photon noise so that they compress like AIA's) and a GOES file covering them."""
  import numpy as np
  from astropy.io import fits

  sys.path.insert(0, common.REPO)
  from tfds_aia import synthetic, synthetic_sun
  if os.path.exists(os.path.join(out_dir, "DONE")):
    return
  shutil.rmtree(out_dir, ignore_errors=True)
  os.makedirs(os.path.join(out_dir, "aia"))
  rng = np.random.default_rng(seed)
  t0 = dt.datetime(2012, 1, 1, tzinfo=dt.UTC).timestamp()
  times = t0 + 86400.0 * np.arange(num_files) + rng.integers(0, 3600, num_files)
  fluxes = synthetic.sample_fluxes(rng, num_files, (0.3, 0.3, 0.25, 0.1, 0.05))
  factor = max(image_size // 1024, 1)
  for t, flux in zip(times, fluxes, strict=True):
    small = synthetic_sun.render_frame(rng, image_size // factor, flux) * synthetic_sun.EXPTIME_S
    dn = np.repeat(np.repeat(small, factor, 0), factor, 1)
    dn += rng.standard_normal(dn.shape, dtype=np.float32) * np.sqrt(dn + 1.0)
    dn = np.clip(np.round(dn), 0, synthetic_sun.SATURATION_DN).astype(np.int16)
    header = fits.Header()
    for key, value in synthetic.aia_header(float(t), image_size).items():
      header[key] = value
    stamp = dt.datetime.fromtimestamp(float(t), dt.UTC).strftime("%Y%m%d_%H%M%S")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(dn, header, "RICE_1")]).writeto(
        os.path.join(out_dir, "aia", f"aia_lev1_171a_{stamp}.fits"))
  os.makedirs(os.path.join(out_dir, "goes"))
  goes_t, goes_f = synthetic.goes_profile(times, fluxes, rng)
  synthetic.write_goes_netcdf(os.path.join(out_dir, "goes", "sci_xrsf-l2-avg1m_g16.nc"),
                              goes_t, goes_f)
  open(os.path.join(out_dir, "DONE"), "w").close()


class TreeMemory:
  """Peaks of the summed resident memory of this process and its children, and of the largest
  child alone (a sampling thread)."""

  def __init__(self, interval_s: float = 0.02):
    import psutil
    self._me, self._interval_s = psutil.Process(), interval_s
    self.peak_mib, self.child_peak_mib = 0.0, 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    import psutil
    while not self._stop.is_set():
      total = 0
      try:
        for p in [self._me, *self._me.children(recursive=True)]:
          try:
            rss = p.memory_info().rss
          except psutil.Error:
            continue
          total += rss
          if p.pid != self._me.pid:
            self.child_peak_mib = max(self.child_peak_mib, rss / 2**20)
      except psutil.Error:
        pass
      self.peak_mib = max(self.peak_mib, total / 2**20)
      time.sleep(self._interval_s)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def _config(args, **data):
  sys.path.insert(0, common.REPO)
  from configs import aia171
  config = aia171.get_config("paper").data
  config.resolution = args.resolution
  day = dt.datetime(2012, 1, 1) + dt.timedelta(days=0.6 * args.num_files)  # One file a day from
  config.train_end = day.isoformat()  # 2012-01-01: 60% train, 20% validation, 20% test.
  config.val_end = (day + dt.timedelta(days=0.2 * args.num_files)).isoformat()
  config.split_gap_hours = 1.0
  config.max_in_flight = args.max_in_flight
  config.cache_dir = "off"
  for key, value in data.items():
    setattr(config, key, value)
  return config


def _cpu_s() -> float:
  """CPU seconds (user + system) of this process and its finished children."""
  return sum(r.ru_utime + r.ru_stime for r in (
      resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def _timed_build(config, manual_dir: str, data_dir: str, **kwargs) -> dict:
  from tfds_aia import builder as aia_builder
  with TreeMemory() as memory:
    t0, cpu0 = time.perf_counter(), _cpu_s()
    b = aia_builder.build(aia_builder.make_builder(config, data_dir=data_dir), manual_dir,
                          **kwargs)
    wall_s, cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
  aia = [os.path.join(root, n) for root, _, names in os.walk(manual_dir)
         for n in names if n.endswith(".fits")]
  return {"wall_s": wall_s, "cpu_s": cpu_s, "files": len(aia),
          "mb": sum(os.path.getsize(p) for p in aia) / 1e6,
          "decoded": len(b.decoded_files), "peak_tree_mib": memory.peak_mib,
          "worker_mib": memory.child_peak_mib,
          "examples": sum(s.num_examples for s in b.info.splits.values()),
          "skipped": len(aia_builder.read_manifest(b))}



def _warm_up(args, work: str) -> None:
  """An untimed build of 4 small frames in this process: the imports done once per process
  (TensorFlow's writer, sunpy's GOES reader, Beam; ~7 s) stay out of the timed builds, and no
  full-resolution image enters this process's peak memory."""
  from tfds_aia import synthetic
  manual = os.path.join(work, "warm_up")
  synthetic.write_archive(manual, num_images=4, image_size=2 * args.resolution, compress=True)
  if args.case == "beam":
    import apache_beam  # noqa: F401
  config = _config(args, num_workers=1)
  config.train_end, config.val_end = "2030-01-01", "2031-01-01"
  _timed_build(config, manual, os.path.join(work, "warm_up_tfds"))


def _case(args) -> dict:
  work = tempfile.mkdtemp(prefix=f"bench_build_{args.case}_", dir=args.work_dir or None)
  try:
    _warm_up(args, work)
    if args.case == "one":
      rows = [_timed_build(_config(args, num_workers=1), args.archive_dir, work)]
    elif args.case == "pool":
      rows = [_timed_build(_config(args, num_workers=args.workers), args.archive_dir, work)]
    elif args.case == "beam":
      options = (f"runner=FnApiRunner,direct_num_workers={args.workers},"
                 "direct_running_mode=multi_processing")
      rows = [_timed_build(_config(args, beam_pipeline_options=options), args.archive_dir, work)]
    else:  # The build cache: cold without the latest files, then with them, then nothing new.
      manual = os.path.join(work, "manual")
      shutil.copytree(args.archive_dir, manual, copy_function=os.link)
      names = sorted(os.listdir(os.path.join(manual, "aia")))
      later = names[-args.new_files:]
      os.makedirs(os.path.join(work, "later"))
      for name in later:
        os.rename(os.path.join(manual, "aia", name), os.path.join(work, "later", name))
      config = _config(args, num_workers=args.workers, cache_dir=os.path.join(work, "cache"))
      rows = [_timed_build(config, manual, os.path.join(work, "tfds"))]
      for name in later:
        os.rename(os.path.join(work, "later", name), os.path.join(manual, "aia", name))
      rows.append(_timed_build(config, manual, os.path.join(work, "tfds"), overwrite=True))
      rows.append(_timed_build(config, manual, os.path.join(work, "tfds"), overwrite=True))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return {"rows": rows, "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_common_args(ap)
  ap.add_argument("--num_files", type=int, default=None, help="FITS files (default 48; quick 8)")
  ap.add_argument("--image_size", type=int, default=None,
                  help="FITS image size in px (default 4096, as AIA; quick 1024)")
  ap.add_argument("--resolution", type=int, default=64, help="dataset resolution (px)")
  ap.add_argument("--workers", type=int, default=0, help="pool and Beam processes (0: all cores)")
  ap.add_argument("--max_in_flight", type=int, default=4,
                  help="frames decoded at once at most (the pool's memory bound)")
  ap.add_argument("--new_files", type=int, default=None,
                  help="files added before the incremental rebuild (default num_files / 8)")
  ap.add_argument("--archive_dir", default="",
                  help="where the FITS archive is written and reused (default: a temp folder)")
  ap.add_argument("--work_dir", default="", help="where the datasets are built (default: /tmp)")
  ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " +
                  ", ".join(CASES))
  ap.add_argument("--timeout", type=float, default=1800.0, help="per-case limit (s)")
  args = ap.parse_args()
  common.configure_threads(args.threads)
  args.num_files = args.num_files or (8 if args.quick else 48)
  args.image_size = args.image_size or (1024 if args.quick else 4096)
  args.new_files = args.new_files or max(args.num_files // 8, 1)
  args.archive_dir = args.archive_dir or os.path.join(
      tempfile.gettempdir(), f"aia_bench_archive_{args.image_size}px_{args.num_files}")
  if args.case:
    common.emit(_case(args))
    return
  common.header("Data build: 1 process, process pool, Beam DirectRunner", args)
  t0 = time.perf_counter()
  write_archive(args.archive_dir, args.num_files, args.image_size)
  print(f"archive: {args.num_files} Rice-compressed {args.image_size}x{args.image_size} FITS files "
        f"in {args.archive_dir} (written in {time.perf_counter() - t0:.0f} s, 0 when reused); "
        f"dataset {args.resolution} px", flush=True)
  workers = args.workers or os.cpu_count()
  flags = [f"--{k}={v}" for k, v in (
      ("num_files", args.num_files), ("image_size", args.image_size),
      ("resolution", args.resolution), ("workers", args.workers),
      ("max_in_flight", args.max_in_flight), ("new_files", args.new_files),
      ("archive_dir", args.archive_dir), ("work_dir", args.work_dir),
      ("threads", args.threads))]
  env = {"PYTHONPATH": common.REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}  # Beam workers.
  at_once = {"one": 1, "pool": min(workers, args.max_in_flight), "beam": workers,
             "cache": min(workers, args.max_in_flight)}
  labels = {
      "one": ["1 process"],
      "pool": [f"process pool, {min(workers, args.max_in_flight)} workers, "
               f"max_in_flight {args.max_in_flight}"],
      "beam": [f"Beam DirectRunner (FnApiRunner), {workers} SDK worker processes"],
      "cache": [f"pool + cache: cold, without the latest {args.new_files} files",
                f"pool + cache: rebuild, {args.new_files} new files",
                "pool + cache: rebuild, nothing new"]}
  rows, base = [], None
  for case in args.cases.split(","):
    out = common.run_case("bench_build.py", [f"--case={case}", *flags], env=env,
                          timeout_s=args.timeout)
    if "error" in out:
      rows.append([labels[case][0], *["-"] * 11, out["error"][:120]])
      continue
    for label, r in zip(labels[case], out["rows"], strict=True):
      per_file = r["wall_s"] / r["files"]
      base = per_file if case == "one" else base
      worker = f"{r['worker_mib']:.0f}" if case != "one" else "-"
      rows.append([label, str(r["files"]), str(r["decoded"]), f"{r['wall_s']:.1f}",
                   f"{r['cpu_s']:.1f}",
                   f"{r['files'] / r['wall_s']:.2f}", f"{r['mb'] / r['wall_s']:.1f}",
                   f"{base / per_file:.2f}x" if base else "-", str(at_once[case]),
                   f"{r['peak_tree_mib']:.0f}", f"{out['main_mib']:.0f}", worker,
                   f"{r['examples']} examples, {r['skipped']} skipped"])
  print()
  common.print_table(["build", "files", "decoded", "wall s", "CPU s", "files/s", "MB/s",
                      "vs 1 process",
                      "decoded at once <=", "peak RSS, all processes (MiB)",
                      "main process (MiB)", "largest worker (MiB)", "output"], rows)
  print(f"after the run: {common.load_average()}")


if __name__ == "__main__":
  main()
