"""Runs every benchmark in turn and prints their tables.

  python bench/run_all.py [--quick] [--threads 2]

Each benchmark is its own script (see bench/README.md); this runs them one after the other with
the same flags, so their figures come from one session on one machine.
"""

import argparse
import os
import subprocess
import sys

SCRIPTS = ("bench_attention.py", "bench_train.py", "bench_sampling.py", "bench_scaling.py",
           "bench_input.py", "bench_build.py", "bench_features.py", "bench_fid.py")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="short runs")
  ap.add_argument("--threads", type=int, default=None, help="intra-op threads")
  ap.add_argument("--only", default="", help="comma-separated subset of " + ", ".join(SCRIPTS))
  args = ap.parse_args()
  here = os.path.dirname(os.path.abspath(__file__))
  flags = (["--quick"] if args.quick else []) + (
      ["--threads", str(args.threads)] if args.threads else [])
  failed = []
  for script in (args.only.split(",") if args.only else SCRIPTS):
    print(f"\n=== {script} {' '.join(flags)}", flush=True)
    rc = subprocess.call([sys.executable, os.path.join(here, script), *flags])
    if rc:
      failed.append(script)
  if failed:
    print(f"\nfailed: {', '.join(failed)}")
    sys.exit(1)


if __name__ == "__main__":
  main()
