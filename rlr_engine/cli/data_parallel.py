"""``rlr train PRESET --nproc N``: data-parallel training through torch.distributed's launcher.

Two sides:

* ``launch`` (the process the user started) validates the preset and creates the run directory,
  then calls torchrun's own API (``torch.distributed.run``: the elastic agent, rendezvous on a
  free local port, ``--standalone``) to start N workers running ``python -m rlr_engine.cli train
  --run-dir DIR`` (or ``--resume DIR``). When a worker dies the agent stops the others and raises
  ChildFailedError; the launcher writes the first failure's reason into summary.json
  (state "failed"), so ``rlr runs`` and the dashboard show why.
* ``train_worker`` (every worker; also what ``torchrun --nproc-per-node N -m rlr_engine.cli train
  PRESET`` runs) joins the process group and runs the engine with its rank. Rank 0 shows progress,
  owns the run directory and takes commands; the others follow. It is wrapped in torch elastic's
  ``@record``, so an error on any rank lands in torchrun's error file with its message.

Multi-node runs use torchrun by hand with its rendezvous flags (``--nnodes``,
``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``); the run directory must then be on a file
system every node sees (every rank reads the checkpoint when resuming).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

from rlr_engine.cli.console import USER_ERROR, console, err_console, print_error, print_summary, watch
from rlr_engine.control.run_dirs import create_run_dir, discard_run_dir, read_jsonl, read_run_config, write_config
from rlr_engine.control.run_files import CONTROL_SOCKET, EVENTS, SUMMARY, TORCHELASTIC
from rlr_engine.control.run_plan import prepare_run, run_config
from rlr_engine.core.atomic_files import write_text_atomic
from rlr_engine.core.config import RunConfig
from rlr_engine.core.errors import CannotStart, RunFailed, UserError
from rlr_engine.core.presets import restored_keys_set
from rlr_engine.run.distributed import Ranks, join_process_group, leave_process_group, ranks_from_environment
from rlr_engine.run.recorder import write_summary


# -- the launcher ---------------------------------------------------------------------------
def launch(args: argparse.Namespace) -> int:
    """Start ``args.nproc`` workers on this machine and wait for them."""
    import torch.distributed.run as torchrun

    config, run_dir, new = prepare_run(args.preset, args.set, args.resume, args.runs, args.device)
    check_visible_gpus(args.nproc, config.device)
    _check_start(config, args.nproc)
    if new:
        create_run_dir(run_dir, config)
    events_before = _size(run_dir / EVENTS)
    worker = ["train", "--resume", str(run_dir)] if args.resume else ["train", "--run-dir", str(run_dir)]
    if args.resume:  # the resume's settings: rank 0 writes them into config.toml once they are taken
        worker += [item for text in args.set for item in ("--set", text)]
        worker += ["--device", args.device] if args.device else []
    torchrun_args = torchrun.parse_args(
        [
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            str(args.nproc),
            "--max-restarts",
            "0",
            # torch elastic's logs and error files: in the run, not in a torchelastic_* folder of
            # the system's temporary directory, which nothing would remove
            "--log-dir",
            str(run_dir / TORCHELASTIC),
            "-m",
            "rlr_engine.cli",
            *worker,
        ]
    )
    announce = _Announcer(run_dir) if args.engine_child else None  # before anything is printed
    console.print(
        f"[bold]{config.name}[/bold] on {args.nproc} processes (torch.distributed) → {run_dir}", highlight=False
    )
    try:
        torchrun.run(torchrun_args)
    except ChildFailedError as error:
        rank, failure = root_failure(error.failures)
        reason = f"rank {rank} failed: {failure_reason(failure)}"
        if new and not (run_dir / EVENTS).exists():
            discard_run_dir(run_dir)  # a failed start (no data set, no such device): nothing ran
        elif _size(run_dir / EVENTS) != events_before:
            record_failure(config, run_dir, reason)
        # else a resume refused at its start: the run stays as it was (config.toml, summary)
        print_error(reason)
        if announce is not None:
            announce.fail(reason)
        # A worker exits USER_ERROR for what the user can fix (no data set, no such device): so
        # does the launcher.
        return USER_ERROR if failure.exitcode == USER_ERROR else 1
    except SignalException as error:  # Ctrl+C: the agent passed it on; rank 0 stopped cleanly
        err_console.print(
            f"interrupted ({error.sigval.name}); resume with: rlr train --nproc {args.nproc} --resume {run_dir}",
            highlight=False,
        )
        return 130
    return 0


def check_visible_gpus(nproc: int, device: str) -> None:
    """On CUDA every process takes a GPU of its own (its LOCAL_RANK): refuse N processes where
    fewer GPUs are visible, before any directory or process exists (UserError, one line)."""
    import torch

    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not on_cuda:
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if nproc > visible:
        raise UserError(
            f"--nproc {nproc}: needs {nproc} CUDA GPUs (one per process) but {visible} "
            f"{'is' if visible == 1 else 'are'} visible; use --nproc {max(visible, 1)} or --device cpu"
        )


class _Announcer:
    """``rlr train --detach --nproc N``: the launcher's output goes to the run's engine.log (so the
    workers, which inherit it, never write into a closed pipe), and once rank 0's control socket
    listens the launcher says ``ready <run dir>`` on the stdout its starter reads — or the
    reason on its stderr when the workers fail first."""

    def __init__(self, run_dir: Path) -> None:
        from rlr_engine.run.host import become_detached_log

        self.run_dir = run_dir
        self.stdout, self.stderr = os.dup(1), os.dup(2)
        self.done = threading.Event()
        become_detached_log(run_dir)
        threading.Thread(target=self._wait, name="rlr-announce", daemon=True).start()

    def _wait(self) -> None:
        from rlr_engine.control.detached import READY
        from rlr_engine.control.run_dirs import engine_alive

        while not self.done.is_set():
            if (self.run_dir / CONTROL_SOCKET).exists() and engine_alive(self.run_dir):
                self._say(self.stdout, f"{READY}{self.run_dir}\n")
                return
            self.done.wait(0.2)

    def _say(self, fd: int, text: str) -> None:
        if not self.done.is_set():
            self.done.set()
            os.write(fd, text.encode("utf-8"))
            os.close(self.stdout)
            os.close(self.stderr)

    def fail(self, reason: str) -> None:
        self._say(self.stderr, f"error: {reason}\n")


#: What a rank says when another rank went away first: the collective it was in lost its peer.
PEER_LOST = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "nccl communicator was aborted",
    "socket timeout",
    "connection refused",
)


def root_failure(failures: dict) -> tuple[int, Any]:
    """The failure that started it all, among torch elastic's ``{rank: ProcessFailure}``.

    ``ChildFailedError.get_first_failure`` orders by timestamp, which has one-second resolution
    and is taken when the agent notices, so when rank 1 is killed its peer — whose all-reduce
    failed in the same second, or which the agent then stopped with SIGTERM — can come first.
    A failure is a consequence when the rank was stopped by SIGTERM (the agent's own clean-up)
    or its message says it lost a peer; the root is the earliest failure that is not one, and
    among equals the lowest rank."""

    def consequence(failure) -> bool:
        if failure.signal_name() == "SIGTERM":
            return True
        return any(pattern in _failure_message(failure).lower() for pattern in PEER_LOST)

    rank = min(failures, key=lambda r: (consequence(failures[r]), failures[r].timestamp, r))
    return rank, failures[rank]


def _failure_message(failure) -> str:
    """The message of a ProcessFailure: from its ``@record`` error file (a dict) or made up by
    torch elastic (a string); "" when there is none."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message or "").strip()


def failure_reason(failure) -> str:
    """One line from torch elastic's ProcessFailure: the exception message its ``@record`` error
    file holds, or what the exit said (a signal, an exit code)."""
    if failure.signal_name() != "<N/A>":
        return f"killed by {failure.signal_name()} (pid {failure.pid})"
    message = _failure_message(failure)
    if not message or message.startswith("To enable traceback"):
        return f"exited with code {failure.exitcode} (pid {failure.pid})"
    return message.splitlines()[0]


def record_failure(config: RunConfig, run_dir: Path, reason: str) -> None:
    """summary.json state "failed" with ``reason``: rank 0's own summary (when it wrote one) keeps
    its numbers and gets the root cause; otherwise a summary is written from the run directory."""
    path = run_dir / SUMMARY
    summary: dict[str, Any] | None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        summary = None
    if summary is not None and summary.get("state") == "failed":
        if summary.get("error") and summary["error"] != reason:
            summary["rank0_error"] = summary["error"]
        summary["error"] = reason
        write_text_atomic(path, json.dumps(summary, indent=2))
        return
    checkpoints = [r.get("step") for r in read_jsonl(run_dir / EVENTS) if r.get("kind") == "checkpoint"]
    write_summary(
        run_dir,
        config,
        "failed",
        config.method_label,
        config.tau,
        {"error": reason},
        {},
        checkpoints[-1] if checkpoints else None,
    )


# -- every worker ---------------------------------------------------------------------------
def worker_config(args: argparse.Namespace) -> RunConfig:
    """The run's config, read without writing anything (every rank computes it)."""
    if args.run_dir:
        return read_run_config(args.run_dir)
    return run_config(args.preset, args.set, args.resume, args.device)


@record
def train_worker(args: argparse.Namespace) -> int:
    """One rank of a data-parallel run (see the module docstring). Raises RunFailed when the
    engine fails, so torchrun's error file holds the reason."""
    from rlr_engine.run.engine import Engine
    from rlr_engine.run.trainer import resolve_device

    ranks = ranks_from_environment()
    config = worker_config(args)
    join_process_group(ranks, ranks.place(resolve_device(config.device)))
    finished = False
    engine: Engine | None = None
    try:
        created = _rank0_run_dir(args) if ranks.is_main else None
        run_dir = ranks.broadcast(str(created[0]) if created else None)
        engine = Engine(
            config,
            run_dir,
            resume=bool(args.resume),
            ranks=ranks,
            resume_settings=restored_keys_set(args.set) if args.resume else (),
        )
        try:
            engine.setup()
        except BaseException:
            if created and created[1]:
                discard_run_dir(created[0])  # torchrun by hand: this rank made it for a run that never started
            raise
        if ranks.is_main and args.resume:  # once the resume's settings proved acceptable, as `rlr train` does
            write_config(Path(run_dir), config)
        code = _run_main(engine, config, ranks) if ranks.is_main else _run_follower(engine)
        finished = True
        return code
    finally:
        if engine is not None and engine.trainer is not None:
            engine.trainer.unwrap()
        del engine
        gc.collect()  # the wrapper's cycles, while the interpreter is alive (Trainer.unwrap)
        leave_process_group(wait_for_others=finished)


def _prepared_run_dir(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    """Resolve and check the run as ``rlr train`` does and create its directory (a new run): rank
    0 of a run started by torchrun by hand (the --nproc launcher does this itself, with its
    checks between). A resumed run's config.toml is rewritten by rank 0 once its engine has taken
    the settings. Returns (config, run directory, whether it is new)."""
    config, run_dir, new = prepare_run(args.preset, args.set, args.resume, args.runs, args.device)
    if new:
        create_run_dir(run_dir, config)
    return config, run_dir, new


def _check_start(config: RunConfig, nproc: int) -> None:
    """What every worker would fail on at its start (no such device, a data directory that is not
    there, a step that cannot be captured in ``nproc`` processes), said once before any process
    starts: CannotStart, exit code 2."""
    from rlr_engine.run.step_graph import graphs_wanted
    from rlr_engine.run.trainer import resolve_device
    from rlr_engine.workload.data import check_data_dir

    device = resolve_device(config.device)
    check_data_dir(config.dataset, config.data_dir)
    try:
        graphs_wanted(config.cuda_graphs, device, nproc)
    except ValueError as error:
        raise CannotStart(f"{config.name}: {error}") from None


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _rank0_run_dir(args: argparse.Namespace) -> tuple[Path, bool]:
    """The run directory and whether rank 0 has just created it (torchrun by hand, a new run);
    the --nproc launcher's directory was made, and is cleaned up, by the launcher."""
    if args.run_dir:
        return Path(args.run_dir), False
    _, run_dir, new = _prepared_run_dir(args)
    return run_dir, new


def _run_main(engine, config: RunConfig, ranks: Ranks) -> int:
    """Rank 0 runs the engine as a one-process ``rlr train`` does: control socket, run lock and
    clean stops on SIGTERM/SIGINT/SIGHUP. torchrun's agent forwards the terminal's Ctrl+C once
    more, so every interrupt asks for the clean stop (the agent's own timeout is the abort)."""
    from rlr_engine.run.host import serve_run

    def on_ready(path: Path) -> None:
        console.print(
            f"[bold]{config.name}[/bold] — {engine.method_label}, {config.model} on {config.dataset}, "
            f"{ranks.world_size} processes → {path}  (attach: rlr-tui --attach {path})",
            highlight=False,
        )

    snap, _ = serve_run(
        engine,
        detached=False,
        follow=lambda e: watch(e, config.name),
        on_ready=on_ready,
        abort_on_second_interrupt=False,
    )
    if snap.state == "failed":
        raise RunFailed(snap.message)
    print_summary(snap)
    if snap.state == "stopped":
        console.print(
            f"stopped at step {snap.step}; resume with: rlr train --nproc {ranks.world_size} --resume {engine.run_dir}"
        )
    return 0


def _run_follower(engine) -> int:
    # Ctrl+C reaches every process of the terminal's group; rank 0 turns it into a clean stop
    # that reaches this rank at the next step boundary.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine.start()
    engine.join()
    snap = engine.latest()
    if snap.state == "failed":
        raise RunFailed(snap.message)
    return 0
