"""Optional extras: whether the package of each is installed, and the one message that says how
to install it. Torch-free (``importlib.util.find_spec`` imports nothing), so a run is checked
before anything of it is created, and the command line stays quick.

  tensorboard  ``tensorboard = true``: event files (pip install 'rlr[tensorboard]')
  attacks      autoattack and square: the AutoAttack authors' pyautoattack (pip install 'rlr[attacks]')
  export       rlr export --onnx: torch's ONNX exporter and its check (pip install 'rlr[export]')
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from rlr_engine.core.catalog import ATTACKS
from rlr_engine.core.errors import PresetError

if TYPE_CHECKING:
    from rlr_engine.core.config import RunConfig

TENSORBOARD_HINT = "pip install 'rlr[tensorboard]' (from a source checkout: pip install -e '.[tensorboard]')"
ATTACKS_HINT = "pip install 'rlr[attacks]'"
EXPORT_HINT = "pip install 'rlr[export]' (from a source checkout: pip install -e '.[export]')"
# torch's ONNX exporter needs onnx and onnxscript; onnxruntime runs the check of what it wrote.
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExtraUnavailable(PresetError):
    """A setting needs an optional package that is not installed; the message says which and
    how to install it."""


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken module in sys.modules
        return False


def attack_unavailable(attack: str) -> ExtraUnavailable:
    """The error for an attack whose package is missing."""
    users = ", ".join(name for name, facts in ATTACKS.items() if facts.needs == ATTACKS[attack].needs)
    return ExtraUnavailable(
        f"{users.replace(', ', ' and ')} need the optional package {ATTACKS[attack].needs}: {ATTACKS_HINT}"
    )


def tensorboard_unavailable(detail: str = "") -> ExtraUnavailable:
    """The error for event files without the tensorboard package."""
    why = f" ({detail})" if detail else ""
    return ExtraUnavailable(
        f"tensorboard = true needs the tensorboard package, which is not installed{why}; "
        f"install it with: {TENSORBOARD_HINT}"
    )


def export_unavailable() -> ExtraUnavailable:
    """The error for --onnx without the packages it needs."""
    missing = [p for p in EXPORT_PACKAGES if not installed(p)]
    return ExtraUnavailable(
        f"--onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: {EXPORT_HINT}"
    )


def require_attack(attack: str) -> None:
    """ExtraUnavailable when ``attack`` needs a package that is not installed."""
    if not installed(ATTACKS[attack].needs):
        raise attack_unavailable(attack)


def require_extras(config: RunConfig) -> None:
    """ExtraUnavailable when ``config`` needs an optional package that is not installed: checked
    before a run starts, not when its first attack is due."""
    if config.tensorboard and not installed("tensorboard"):
        raise tensorboard_unavailable()
    if not installed(ATTACKS[config.attack].needs):
        raise ExtraUnavailable(f"attack = {config.attack!r}: {attack_unavailable(config.attack)}")
