"""The console commands (absl programs); each module's ``run()`` is a setup.py entry point.

Importing this package, which every command does before NumPy is loaded (``mergejax/__init__`` imports
nothing eagerly), limits NumPy's OpenBLAS to one thread unless ``OPENBLAS_NUM_THREADS`` is set: the
commands do their numerical work in XLA, and OpenBLAS's idle threads, started with NumPy, spin on
every core for a while (~0.1-0.2 CPU s of a short merge, taken from XLA on a 2-core host).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import difflib  # noqa: E402  (after the environment above)
import gc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Sequence  # noqa: E402

from absl import app, flags  # noqa: E402


def program_name(main: Callable[..., Any]) -> str:
  """``mergejax-<command>`` for a command module's ``main`` (e.g. mergejax.cli.build_world -> mergejax-build-world)."""
  module = main.__module__
  if module == "__main__":  # python -m mergejax.cli.<command>
    module = getattr(sys.modules["__main__"].__spec__, "name", "") or module
  return "mergejax-" + module.rsplit(".", 1)[-1].replace("_", "-")


def _unknown_config_field(argv: Sequence[str]) -> str | None:
  """The first ``--config.a.b=...`` override naming a field its config does not have, as a sentence."""
  cfg = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if cfg is None:  # absl stopped before the config file was loaded: load it here
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    try:
      spec = importlib.util.spec_from_file_location("_config", path.split(":", 1)[0])
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      cfg = module.get_config()
    except Exception:  # pylint: disable=broad-except  # no better message than absl's then
      return None
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, walked = cfg, []
    for key in path.split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if key not in keys:
        close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
        where = ".".join(["config"] + walked)
        hint = f" (did you mean {'.'.join(['--config'] + walked + close)}?)" if close else (
            f" ({where} has {', '.join(sorted(map(str, keys)))})" if keys else f" ({where} has no fields)")
        return f"unknown config field --config.{path}{hint}"
      node, walked = node[key], walked + [key]
  return None


def parse_flags(argv: list[str], prog: str) -> list[str]:
  """absl flag parsing where a bad flag or an unknown ``--config.`` field is one line on stderr (exit 2)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    message = lines[0] + " (--helpfull lists the flags)"
    if "Traceback" in str(e):  # a config file that failed to load: its exception, not the traceback
      cause = next((l for l in lines[1:] if l[:1].isalpha() and "Traceback" not in l), lines[-1])
      message = f"{lines[0].rstrip(':')}: {cause}"
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config lacks
    message = _unknown_config_field(argv) or f"bad --config override: {str(e).splitlines()[0]}"
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def message(e: BaseException) -> str:
  """An exception as one line (a KeyError's text without the quotes ``str`` adds)."""
  text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
  return text.splitlines()[0] if text else type(e).__name__


def flags_help(module_names: Sequence[str]) -> str:
  """A "Flags:" section for ``--help``: every flag the modules define, with its help and default."""
  by_module = flags.FLAGS.flags_by_module_dict()
  seen, lines = set(), []
  for name in module_names:
    for f in sorted(by_module.get(name, ()), key=lambda f: f.name):
      if f.name in seen:
        continue
      seen.add(f.name)
      scalar = isinstance(f.default, (bool, int, float)) or (isinstance(f.default, str) and f.default)
      default = f" (default: {f.default})" if scalar else ""
      lines.append(f"  --{f.name}: {f.help.rstrip('.')}{default}")
  return "Flags:\n" + "\n".join(lines) if lines else ""


def run_main(main: Callable[[list[str]], Any], doc: str | None = None) -> None:
  """``absl.app.run(main)`` with one-line flag errors (:func:`parse_flags`), and with the objects alive
  frozen (``gc.freeze``) when it starts and before the exit. ``--help`` prints ``doc`` (default: the
  command module's docstring) and the command's flags: absl prints the ``__main__`` module's
  docstring, which for an installed console script is the generated wrapper's (none).

  CPython's garbage collections walk every object that the imported modules (JAX, TensorFlow, seqio)
  created: during the run, to find no garbage among them, and at the exit, only to free memory the OS
  reclaims with the process (about a tenth of a short ``mergejax-merge`` run). Frozen objects are
  skipped; atexit handlers still run.
  """
  prog = program_name(main)
  module = sys.modules.get(main.__module__)
  text = doc if doc is not None else (getattr(module, "__doc__", None) or "")
  sys.modules["__main__"].__doc__ = "\n".join(
      x for x in (text.rstrip(), flags_help([main.__module__, "mergejax.cli.common"])) if x) + "\n"
  gc.freeze()
  try:
    app.run(main, flags_parser=lambda argv: parse_flags(argv, prog))
  finally:
    gc.freeze()
