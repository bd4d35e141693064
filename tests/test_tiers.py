"""The tiers' rules at run time (pyproject.toml states them as import-linter contracts, checked
statically in CI): what each tier loads when it is imported for real."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imports every module of the named packages, then prints the loaded modules matching the
# forbidden prefixes (one per line) and exits 1 when there are any.
PROBE = """
import importlib, pkgutil, sys
packages, forbidden = sys.argv[1].split(","), tuple(sys.argv[2].split(","))
for name in packages:
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.startswith(forbidden) or m in {f.rstrip(".") for f in forbidden})
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def loads(packages: list[str], forbidden: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(packages), ",".join(forbidden)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_the_core_and_the_control_surface_load_no_torch_and_nothing_above_them():
    result = loads(
        ["rlr_engine.core", "rlr_engine.control"],
        [
            "torch.",
            "numpy.",
            "textual.",
            "rlr_engine.run.",
            "rlr_engine.method.",
            "rlr_engine.workload.",
            "rlr_engine.cli.",
            "rlr_tui.",
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_loads_only_the_control_surface_and_the_core():
    result = loads(
        ["rlr_tui"],
        ["torch.", "numpy.", "rlr_engine.run.", "rlr_engine.method.", "rlr_engine.workload.", "rlr_engine.cli."],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_method_library_loads_nothing_of_runs():
    result = loads(
        ["rlr_engine.method"],
        [
            "rlr_engine.run.",
            "rlr_engine.cli.",
            "rlr_engine.control.",
            "rlr_engine.workload.",
            "rlr_tui.",
            "textual.",
            "rich.",
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["CondLR", "RankAdaptation", "to_low_rank", "low_rank_layers", "core_optimizer"])
def test_the_method_is_importable_from_the_package_top(name):
    import rlr_engine

    assert getattr(rlr_engine, name).__module__.startswith("rlr_engine.method.")


def test_the_readmes_layout_names_every_module_in_its_own_tier():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `/"): line for line in layout.splitlines() if line.startswith("| `")}
    tiers = sorted(p.name for p in (ROOT / "rlr_engine").iterdir() if (p / "__init__.py").exists())
    assert sorted(rows) == tiers, "one row per tier of rlr_engine"
    missing = [
        f"{tier}/{module.stem}"
        for tier in tiers
        for module in sorted((ROOT / "rlr_engine" / tier).glob("*.py"))
        if not module.stem.startswith("__") and f"`{module.stem}`" not in rows[tier]
    ]
    assert not missing, f"modules the README's layout does not name in their tier's row: {missing}"
