"""The files of a run directory, named once. Torch-free: the dashboard and ``rlr runs`` read
them too.

``runs/<timestamp>-<preset>/``
  config.toml     the resolved config (rewritten when a resume overrides a key)
  metrics.jsonl   train windows, evaluations, layer ranks, attacks
  events.jsonl    what the user was told (seq continues across resumes)
  checkpoint.pt   the latest good checkpoint (written atomically)
  summary.json    state (finished, stopped or failed) and the final numbers
  engine.json     pid and start time of the engine process; it holds an fcntl lock on it while alive
  control.sock    the engine's control socket (mode 0600) while it lives
  engine.log      stdout/stderr of a detached engine
  error.log       the traceback of an unexpected engine error
  tensorboard/    TensorBoard event files (with ``tensorboard = true``)
  torchelastic/   torch elastic's logs and error files of ``--nproc`` runs, one folder per launch
  undo/           states from before live changes, past the undo history's memory limit, while
                  the engine that made them lives (run/undo.py)
"""

from __future__ import annotations

DEFAULT_RUNS = "runs"  # where run directories go, relative to the working directory, unless --runs says
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
ENGINE_INFO = "engine.json"
CONTROL_SOCKET = "control.sock"
ENGINE_LOG = "engine.log"
ERROR_LOG = "error.log"
TENSORBOARD = "tensorboard"
TORCHELASTIC = "torchelastic"
UNDO = "undo"
