"""The sanity checks on plain records: each flag fires on a crafted record and stays quiet on a
healthy one; sanity.py works without torch."""

import subprocess
import sys

import pytest

from rlr_engine.core.sanity import (
    ACCURACY_RISES,
    BLACK_BOX,
    BLACK_BOX_WINS,
    ENSEMBLE,
    HIGH_AT_LARGE_EPS,
    ITERATIVE,
    ITERATIVE_ABOVE_FGSM,
    L2,
    LINF,
    SINGLE_STEP,
    AttackRecord,
    Component,
    sanity_report,
)

EPS = (0.0, 0.1, 0.3)


def fgsm(*acc, samples=200):
    return AttackRecord("fgsm", SINGLE_STEP, LINF, EPS, acc, samples)


def pgd(*acc, samples=200):
    return AttackRecord("pgd-linf", ITERATIVE, LINF, EPS, acc, samples)


def square(*acc, samples=200):
    return AttackRecord("square", BLACK_BOX, LINF, EPS, acc, samples)


def autoattack(white, after_square, samples=200):
    parts = (
        Component("apgd-ce", ITERATIVE, white),
        Component("apgd-t", ITERATIVE, white),
        Component("fab-t", ITERATIVE, white),
        Component("square", BLACK_BOX, after_square),
    )
    return AttackRecord("autoattack", ENSEMBLE, LINF, EPS, after_square, samples, parts)


HEALTHY = [
    fgsm(0.95, 0.4, 0.08),
    pgd(0.95, 0.2, 0.0),
    square(0.95, 0.5, 0.1),
    autoattack((0.95, 0.15, 0.0), (0.95, 0.15, 0.0)),
]


def codes(records, dataset="digits"):
    return [f.code for f in sanity_report(records, dataset).flags]


def test_healthy_records_raise_no_flag_and_every_check_runs():
    report = sanity_report(HEALTHY, "fashion-mnist")
    assert report.flags == () and report.skipped == ()
    assert report.lines() == ["sanity checks: no flags"]


def test_accuracy_rising_with_eps_is_flagged():
    assert codes([pgd(0.95, 0.2, 0.3)]).count(ACCURACY_RISES) == 1
    assert ACCURACY_RISES not in codes([pgd(0.95, 0.2, 0.2)])


def test_a_difference_of_one_image_is_noise_not_a_flag():
    assert ACCURACY_RISES not in codes([pgd(0.95, 0.2, 0.205, samples=200)])
    assert ACCURACY_RISES in codes([pgd(0.95, 0.2, 0.215, samples=200)])


def test_pgd_above_fgsm_at_equal_eps_is_flagged():
    flags = sanity_report([fgsm(0.95, 0.3, 0.05), pgd(0.95, 0.45, 0.0)], "digits").flags
    assert [f.code for f in flags] == [ITERATIVE_ABOVE_FGSM]
    assert "ε=0.1" in flags[0].message and "pgd-linf" in flags[0].message


def test_attacks_on_different_images_are_not_held_against_each_other():
    """FGSM on the whole test set against PGD on a 2000-image subset: the subset's clean
    accuracy is already higher, so PGD above FGSM there says nothing about the attack."""
    whole_set, subset = fgsm(0.90, 0.80, 0.05, samples=0), pgd(0.92, 0.82, 0.0, samples=2000)
    report = sanity_report([whole_set, subset], "digits")
    assert ITERATIVE_ABOVE_FGSM not in [f.code for f in report.flags]
    assert any(s.startswith("iterative vs FGSM") and "same images" in s for s in report.skipped)
    assert ITERATIVE_ABOVE_FGSM in codes([fgsm(0.90, 0.80, 0.05, samples=2000), subset])
    assert BLACK_BOX_WINS not in codes([pgd(0.95, 0.4, 0.0, samples=0), square(0.95, 0.2, 0.0, samples=100)])


def test_square_beating_white_box_is_flagged_as_a_separate_record_and_inside_autoattack():
    assert BLACK_BOX_WINS in codes([pgd(0.95, 0.6, 0.05), square(0.95, 0.2, 0.0)])
    inside = autoattack((0.95, 0.6, 0.5), (0.95, 0.2, 0.0))
    assert BLACK_BOX_WINS in codes([inside])


def test_square_is_only_held_against_attacks_of_the_same_norm():
    l2 = AttackRecord("pgd-l2", ITERATIVE, L2, EPS, (0.95, 0.9, 0.8), 200)
    assert BLACK_BOX_WINS not in codes([l2, square(0.95, 0.2, 0.0)])


def test_high_accuracy_at_large_eps_is_flagged_and_the_strongest_attack_decides():
    assert HIGH_AT_LARGE_EPS in codes([pgd(0.95, 0.6, 0.5)], "fashion-mnist")
    # FGSM's own weakness at 0.3 is not blamed on the model when PGD breaks it there.
    assert HIGH_AT_LARGE_EPS not in codes([fgsm(0.95, 0.4, 0.3), pgd(0.95, 0.2, 0.0)])


def test_a_model_at_chance_is_not_blamed_for_accuracy_at_large_eps_and_the_report_says_why():
    # an untrained model that predicts one class keeps that class's share (12 %) at any ε
    report = sanity_report([fgsm(0.12, 0.12, 0.12), pgd(0.12, 0.12, 0.12)], "fashion-mnist")
    assert HIGH_AT_LARGE_EPS not in [f.code for f in report.flags]
    assert any("clean accuracy 12.0% is at chance (10% for 10 classes)" in s for s in report.skipped)
    assert HIGH_AT_LARGE_EPS in codes([pgd(0.16, 0.12, 0.12)], "fashion-mnist")  # above chance: checked


def test_data_sets_without_a_large_eps_skip_that_check_and_say_so():
    report = sanity_report([pgd(0.95, 0.6, 0.5)], "cifar10")
    assert HIGH_AT_LARGE_EPS not in [f.code for f in report.flags]
    assert any("no large ε is stated for data set 'cifar10'" in s for s in report.skipped)
    assert any("not checked: " in line for line in report.lines())


def test_checks_that_cannot_run_are_reported_not_silently_passed():
    report = sanity_report([AttackRecord("fgsm", SINGLE_STEP, LINF, (0.0, 0.01), (0.9, 0.8))], "digits")
    assert report.flags == ()
    assert len(report.skipped) == 3  # no iterative attack, no Square, no ε ≥ 0.3


def test_mismatched_record_is_rejected():
    with pytest.raises(ValueError, match="2 ε values but 1"):
        AttackRecord("fgsm", SINGLE_STEP, LINF, (0.0, 0.1), (0.9,))
    with pytest.raises(ValueError, match="kind must be one of"):
        AttackRecord("fgsm", "magic", LINF, (0.0,), (0.9,))


def test_sanity_module_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from rlr_engine.core import sanity, catalog\n"
        "print(sanity.sanity_report([], 'digits').skipped[0])"
    )
    from pathlib import Path

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr


def test_dashboard_flags_come_from_the_snapshots_latest_attacks():
    from rlr_engine.control.records import AttackResult, Snapshot
    from rlr_tui.widgets.robustness import flag_summary, snapshot_sanity

    old = AttackResult(10, 1, "pgd-linf", EPS, (0.95, 0.9, 0.9))  # an earlier step: not mixed in
    pgd_now = AttackResult(20, 2, "pgd-linf", EPS, (0.95, 0.2, 0.0))
    square_now = AttackResult(20, 2, "square", EPS, (0.95, 0.1, 0.0))
    snap = Snapshot(dataset="digits", adversarial=square_now, adversarial_history=(old, pgd_now, square_now))
    assert flag_summary(snapshot_sanity(snap)) == f"⚠ {BLACK_BOX_WINS}"
    healthy = Snapshot(dataset="digits", adversarial=pgd_now, adversarial_history=(old, pgd_now))
    assert flag_summary(snapshot_sanity(healthy)) == "checks: no flags"
    assert snapshot_sanity(Snapshot()) is None


def test_attack_dialog_returns_a_registry_name_the_engine_accepts():
    import asyncio

    from textual.app import App

    from rlr_engine.core.config import RunConfig
    from rlr_engine.workload.attacks import ATTACKS
    from rlr_tui.screens.attack_dialog import AttackDialog

    chosen = []

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(AttackDialog(current="fgsm"), chosen.append)

    async def pick():
        async with Host().run_test() as pilot:
            await pilot.pause()
            await pilot.press("down", "down", "down", "down", "enter")
            await pilot.pause()

    asyncio.run(pick())
    assert chosen == [list(ATTACKS)[4]] == ["autoattack"]
    assert RunConfig().attack_spec(chosen[0]).name == "autoattack"  # what AttackNow resolves


def test_components_and_reports_survive_a_json_round_trip():
    import json

    part = Component("apgd-ce", ITERATIVE, (0.5, 0.25))
    assert Component.from_dict(json.loads(json.dumps(part.to_dict()))) == part
    report = sanity_report([AttackRecord("fgsm", SINGLE_STEP, LINF, (0.0, 0.1), (0.5, 0.7))], None)
    raw = json.loads(json.dumps(report.to_dict()))
    assert [f["code"] for f in raw["flags"]] == [f.code for f in report.flags] == [ACCURACY_RISES]
    assert raw["not_checked"] == list(report.skipped)
