r"""``mergejax-inspect``: the leaf tree of a checkpoint, or every difference between several.

    mergejax-inspect PATH                 # path, shape, dtype, bytes of every leaf, and totals
    mergejax-inspect PATH1 PATH2 [...]    # missing/extra leaves, shape and dtype differences
    mergejax-inspect --values PATH1 PATH2 # ... and max |a - b| of each leaf that differs in value

Exit status: 0 (one checkpoint, or identical ones), 1 (differences found), 2 (bad input).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from absl import app, flags, logging

from mergejax import cli
from mergejax.checkpoints import open_source

_VALUES = flags.DEFINE_bool("values", False, "Also compare leaf values (reads every leaf, one at a time).")


def _fmt_bytes(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024
  return str(n)


def describe(path: str) -> list[str]:
  src = open_source(path)
  specs = src.specs()
  width = max((len(s.path) for s in specs), default=4)
  lines = [f"{path} ({src.format})", f"{'leaf':<{width}}  {'shape':<20} {'dtype':<10} {'bytes':>12}"]
  for s in specs:
    lines.append(f"{s.path:<{width}}  {str(list(s.shape)):<20} {str(s.dtype):<10} {s.nbytes:>12}")
  total = sum(s.nbytes for s in specs)
  params = sum(s.size for s in specs)
  lines.append(f"total: {len(specs)} leaves, {params:,} parameters, {total:,} bytes ({_fmt_bytes(total)})")
  return lines


def differences(paths: Sequence[str], values: bool = False) -> list[str]:
  """Every difference between the first checkpoint and each other one."""
  srcs = [open_source(p) for p in paths]
  ref = {s.path: s for s in srcs[0].specs()}
  out = []
  for p, src in zip(paths[1:], srcs[1:]):
    other = {s.path: s for s in src.specs()}
    for k in sorted(set(ref) - set(other)):
      out.append(f"{p}: missing leaf '{k}' (in {paths[0]})")
    for k in sorted(set(other) - set(ref)):
      out.append(f"{p}: extra leaf '{k}' (not in {paths[0]})")
    for k in sorted(set(ref) & set(other)):
      a, b = ref[k], other[k]
      if a.shape != b.shape:
        out.append(f"{p}: leaf '{k}' has shape {list(b.shape)}, {paths[0]} has {list(a.shape)}")
      elif a.dtype != b.dtype:
        out.append(f"{p}: leaf '{k}' has dtype {b.dtype}, {paths[0]} has {a.dtype}")
      elif values:
        x = np.asarray(srcs[0].read([k])[k]).astype(np.float64)
        y = np.asarray(src.read([k])[k]).astype(np.float64)
        if not np.array_equal(x, y, equal_nan=True):
          d = np.abs(x - y)
          out.append(f"{p}: leaf '{k}' values differ: max |a-b| = {np.nanmax(d):.6g}, "
                     f"{int(np.count_nonzero(x != y)):,} of {x.size:,} entries")
  return out


def main(argv: Sequence[str]) -> None:
  paths = argv[1:]
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not paths:
    raise app.UsageError("give one or more checkpoint paths")
  try:
    if len(paths) == 1:
      print("\n".join(describe(paths[0])))
      return
    diffs = differences(paths, values=_VALUES.value)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"mergejax-inspect: error: {msg}", file=sys.stderr)
    sys.exit(2)
  if diffs:
    print("\n".join(diffs))
    sys.exit(1)
  print(f"no differences between {len(paths)} checkpoints" + (" (structure and values)" if _VALUES.value else
                                                              " (structure; --values to compare contents)"))


def run() -> None:
  cli.run_main(main)


if __name__ == "__main__":
  run()
