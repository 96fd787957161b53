"""A build on Apache Beam: the frames of a split are preprocessed by the runner's workers.

The work list is a JSON-lines file in the dataset folder (not pickled into the pipeline: archives
have 10^5 frames); each worker writes its skip records and decoded files to a report file there,
read back (and the work files removed) after the pipeline ran.
"""

from __future__ import annotations

import dataclasses
import json
import os

from etils import epath

from tfds_aia import fits_io, frames, goes
from tfds_aia.example import example_of

BEAM_FILE_PREFIX = "aia_flares_beam_"  # Work lists and reports of a Beam build (removed after).


def beam_options_from_string(options: str):
  """Beam PipelineOptions from "runner=DirectRunner,direct_num_workers=2" (the format of
  `tfds build --beam_pipeline_options`)."""
  from apache_beam.options.pipeline_options import PipelineOptions
  return PipelineOptions(flags=[f"--{o.strip()}" for o in options.split(",") if o.strip()])


def beam_examples(data_dir: str, items, split: str, settings: dict, resolution: int,
                  cache_dir: str):
  """A PTransform: work list -> preprocessed frames -> examples of `split`'s labelled `items`."""
  import apache_beam as beam
  work = epath.Path(data_dir) / f"{BEAM_FILE_PREFIX}work_{split}.jsonl"
  work.write_text("".join(_item_to_json(item) + "\n" for item in items))
  report = os.fspath(epath.Path(data_dir) / f"{BEAM_FILE_PREFIX}report_{split}.json")
  args = (settings, resolution, cache_dir)

  @beam.ptransform_fn
  def examples(root):
    results = (root
               | "ReadWorkList" >> beam.io.ReadFromText(os.fspath(work))
               | "Spread" >> beam.Reshuffle()  # Decoding, not reading the list, is the work.
               | "Preprocess" >> beam.Map(_preprocess_line, *args))
    _ = (results
         | "ReportRecords" >> beam.Map(lambda r: (r[2], r[3]))
         | "CollectReport" >> beam.combiners.ToList()
         | "WriteReport" >> beam.Map(_write_json, path=report))
    return results | "Examples" >> beam.FlatMap(
        lambda r: [example_of(r[0], r[1])] if r[1] is not None else [])

  return examples()  # pylint: disable=no-value-for-parameter


def read_beam_reports(data_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
  """(skip records (file, reason), decoded files) of the Beam workers; removes the work files."""
  folder = epath.Path(data_dir)
  skips, decoded_files = [], []
  for path in sorted(folder.glob(f"{BEAM_FILE_PREFIX}report_*.json")):
    for records, decoded in json.loads(path.read_text()):
      skips.extend((file, reason) for file, reason in records)
      decoded_files.extend(decoded)
  for path in folder.glob(f"{BEAM_FILE_PREFIX}*"):
    path.unlink()
  return skips, decoded_files


def _item_to_json(item) -> str:
  time_unix_s, members, label = item
  return json.dumps({"time_unix_s": time_unix_s, "label": dataclasses.asdict(label),
                     "members": [[dataclasses.asdict(h) for h in copies] for copies in members]})


def _item_from_json(line: str):
  d = json.loads(line)
  members = [[fits_io.AiaHeader(**{**h, "shape": tuple(h["shape"])}) for h in copies]
             for copies in d["members"]]
  return d["time_unix_s"], members, goes.Label(**d["label"])


def _preprocess_line(line: str, settings: dict, resolution: int, cache_dir: str):
  """Beam: ((time, kept header per channel, label), image or None, skip records, decoded) of
  one work-list line."""
  time_unix_s, members, label = _item_from_json(line)
  image, skips, decoded, kept = frames.preprocess_frame(members, settings, resolution, cache_dir)
  return (time_unix_s, kept, label), image, [list(r) for r in skips], decoded


def _write_json(records, path: str) -> None:
  epath.Path(path).write_text(json.dumps(records))
