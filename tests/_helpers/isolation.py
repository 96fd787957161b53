"""The test run's own data, config and cache folders, and a record of writes outside them.

The libraries under test keep data and caches in the user's home folder by default: TFDS in
~/tensorflow_datasets, Keras in ~/.keras, matplotlib, astropy and sunpy under ~/.cache and
~/.config, sunpy's download database in ~/sunpy. A test run that reads those could depend on what
an earlier run (or the user) left there, and one that writes them changes the user's machine.
`redirect` points every one of them at a fresh folder; it must run before those libraries are
imported, since each reads its variable once, at import. Subprocesses started by the tests inherit
the variables.
"""

import os
import sys
import threading

# Environment variable -> folder under the test run's root. Forced, not defaulted: a value the
# user set names the user's own folder.
FOLDERS = {
    "TFDS_DATA_DIR": "tensorflow_datasets",  # The code's default data.data_dir as well.
    "XDG_CACHE_HOME": "cache",  # astropy, sunpy (cache.db), fontconfig, torch hub.
    "XDG_CONFIG_HOME": "config",  # astropy, sunpy.
    "XDG_DATA_HOME": "data",  # sunpy's sample data.
    "XDG_STATE_HOME": "state",
    "MPLCONFIGDIR": "matplotlib",  # matplotlib's matplotlibrc and font cache.
    "KERAS_HOME": "keras",  # keras.json, written when TensorFlow imports Keras.
    "TORCH_HOME": "torch",
    "SUNPY_CONFIGDIR": "sunpy_config",  # Holds the sunpyrc written below.
    "SUNPY_DOWNLOADDIR": os.path.join("sunpy", "data"),
}
# Unset: a persistent jit cache the user enabled is theirs; tests that want one name their own.
UNSET = ("JAX_COMPILATION_CACHE_DIR",)
# What the libraries would use under the user's home folder without the variables above.
HOME_DEFAULTS = ("tensorflow_datasets", ".keras", ".cache", ".config", ".local", ".matplotlib",
                 ".astropy", "sunpy")


def redirect(root: str) -> dict[str, str]:
  """Points the libraries' data, config and cache folders into `root`; returns {variable: path}.

  sunpy has no variable for its working folder (its download database goes to
  <working_dir>/data_manager, ~/sunpy by default): a sunpyrc in SUNPY_CONFIGDIR sets it.
  """
  paths = {name: os.path.join(root, sub) for name, sub in FOLDERS.items()}
  for name, path in paths.items():
    os.makedirs(path, exist_ok=True)
    os.environ[name] = path
  for name in UNSET:
    os.environ.pop(name, None)
  working_dir = os.path.join(root, "sunpy")
  with open(os.path.join(paths["SUNPY_CONFIGDIR"], "sunpyrc"), "w") as f:
    f.write(f"[general]\nworking_dir = {working_dir}\n")
  paths["sunpy working_dir"] = working_dir
  return paths


class WriteRecorder:
  """Records files and folders this process creates, writes or removes under `watched` folders.

  A Python audit hook (sys.addaudithook) sees every open for writing, mkdir, rename, removal and
  sqlite database made through Python, whichever library makes it; writes from C++ (TensorFlow,
  XLA) and from subprocesses are not seen, which is why `redirect` moves the folders as well.
  Paths with a part in `ignored_names` (bytecode caches) or under an `ignored` folder (the
  virtual environment, when it lives in the repository) are not recorded.
  """

  # Audit event -> (position of a path written or removed, position of its dir_fd or None).
  EVENTS = {"open": ((0, None),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
            "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.symlink": ((1, 2),),
            "os.link": ((1, 3),), "os.truncate": ((0, None),), "shutil.copyfile": ((1, None),),
            "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None)),
            "shutil.rmtree": ((0, 1),), "sqlite3.connect": ((0, None),)}

  def __init__(self, watched, ignored=(), ignored_names=("__pycache__",)):
    self.watched = _prefixes(watched)
    self.ignored = _prefixes(ignored)
    self.ignored_names = frozenset(ignored_names)
    self.context = "collection"  # Named in each record: the test (node id) running at the time.
    self.records: list[str] = []
    self._lock = threading.Lock()
    self._active = False
    self._installed = False

  def start(self) -> None:
    """Installs the hook (once per process: audit hooks cannot be removed; stop() mutes it)."""
    self._active = True
    if not self._installed:
      self._installed = True
      sys.addaudithook(self._hook)

  def stop(self) -> None:
    self._active = False

  def ignore(self, folder) -> None:
    """Stops recording writes under `folder`."""
    self.ignored = tuple(sorted({*self.ignored, *_prefixes([folder])}))

  def take(self) -> list[str]:
    """The records since the last take(), oldest first."""
    with self._lock:
      out, self.records = self.records, []
    return out

  def _hook(self, event, args):
    if not self._active:
      return
    positions = self.EVENTS.get(event)
    if positions is None:
      return
    try:
      if event == "open" and not _opens_for_writing(args[1], args[2]):
        return
      for i, fd_i in positions:
        path = _path(args, i, fd_i)
        if (path is not None and path.startswith(self.watched)
            and not path.startswith(self.ignored)
            and self.ignored_names.isdisjoint(path.split(os.sep))):
          with self._lock:
            self.records.append(f"{event} {path.rstrip(os.sep)} (during {self.context})")
    except Exception:  # noqa: BLE001 (an audit hook that raises would fail the operation)
      pass


def _prefixes(folders) -> tuple[str, ...]:
  """Each folder as it is given and with its links resolved, ending in a separator."""
  out = set()
  for folder in folders:
    out.add(os.path.join(os.path.abspath(folder), ""))
    out.add(os.path.join(os.path.realpath(folder), ""))
  return tuple(sorted(out))


def _path(args, i, fd_i) -> str | None:
  """Argument i of an audit event as an absolute path ending in a separator; None when it is no
  path, or is relative to a directory descriptor (shutil.rmtree's) that cannot be resolved."""
  arg = args[i] if i < len(args) else None
  if not isinstance(arg, bytes | str | os.PathLike):
    return None
  path = os.fsdecode(arg)
  dir_fd = args[fd_i] if fd_i is not None and fd_i < len(args) else None
  if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):
    try:
      path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    except OSError:
      return None
  return os.path.join(os.path.abspath(path), "")


def _opens_for_writing(mode, flags) -> bool:
  if isinstance(mode, str):  # open(): "r", "rb", "w", "a+", ...
    return any(c in mode for c in "wax+")
  return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
