"""Small calibration tables the tests write themselves."""


def aiapy_table(path, rows) -> str:
  """An aia.response-style correction table as aiapy's get_correction_table reads it."""
  cols = ["DATE", "VER_NUM", "WAVE_STR", "WAVELNTH", "T_START", "T_STOP", "EFFA_P1", "EFFA_P2",
          "EFFA_P3", "EFF_AREA", "EFF_WVLN"]
  lines = [",".join(cols)]
  for r in rows:
    lines.append(",".join(str(r[c]) for c in cols))
  path.write_text("\n".join(lines) + "\n")
  return str(path)
