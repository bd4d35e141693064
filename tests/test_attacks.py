import pytest
import torch
from helpers import train_digits_cnn
from torch import nn

from rlr_engine.core.config import AttackSpec
from rlr_engine.core.sanity import BLACK_BOX_WINS, HIGH_AT_LARGE_EPS
from rlr_engine.workload.attacks import (
    ATTACKS,
    AUTOATTACK_PARTS,
    STANDARD,
    AttackBudget,
    adversarial_accuracy,
    fgsm_batch,
    import_advertorch,
    import_pyautoattack,
    robustness,
    robustness_with_checks,
)
from rlr_engine.workload.models import digits_cnn


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return train_digits_cnn(digits_cnn())


def test_shim_makes_advertorch_importable_on_current_torch():
    attacks = import_advertorch()
    for name in ("GradientSignAttack", "LinfPGDAttack", "L2PGDAttack", "CarliniWagnerL2Attack", "FABAttack"):
        assert hasattr(attacks, name)


@pytest.mark.slow
def test_fgsm_lowers_accuracy_more_as_eps_grows(trained):
    model, x, y = trained
    acc = adversarial_accuracy(model, x, y, AttackSpec("fgsm", (0.0, 0.05, 0.2)))
    assert acc[0.0] > 0.9
    assert acc[0.2] < acc[0.05] < acc[0.0]
    assert acc[0.2] < 0.6


def test_shared_gradient_fgsm_equals_advertorch_per_eps(trained):
    model, x, y = trained
    model.eval()
    attacks = import_advertorch()
    ours = fgsm_batch(model, x[:64], y[:64], (0.03, 0.1))
    for eps, x_adv in zip((0.03, 0.1), ours):
        adversary = attacks.GradientSignAttack(
            model, loss_fn=nn.CrossEntropyLoss(reduction="sum"), eps=eps, clip_min=0.0, clip_max=1.0
        )
        torch.testing.assert_close(x_adv, adversary.perturb(x[:64], y[:64]))
        assert (x_adv - x[:64]).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", ["pgd-linf", "pgd-l2"])
def test_pgd_is_at_least_as_strong_as_fgsm_and_stays_in_budget(trained, name):
    model, x, y = trained
    x, y = x[:128], y[:128]
    eps = 0.1 if name == "pgd-linf" else 1.0
    acc = adversarial_accuracy(model, x, y, AttackSpec(name, (0.0, eps), steps=10))
    assert acc[eps] < acc[0.0]
    if name == "pgd-linf":
        fgsm = adversarial_accuracy(model, x, y, AttackSpec("fgsm", (eps,)))
        assert acc[eps] <= fgsm[eps] + 0.02


def test_attacking_restores_training_mode(trained):
    model, x, y = trained
    model.train()
    adversarial_accuracy(model, x[:10], y[:10], AttackSpec("fgsm", (0.1,)))
    assert model.training


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "cw"}, "attack must be"),
        ({"eps": ()}, "eps must be"),
        ({"eps": (1.5,)}, "eps must be"),
        ({"steps": 0}, "steps must be"),
    ],
)
def test_bad_attack_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackSpec(**kwargs)


@pytest.mark.slow
def test_channels_last_models_give_the_same_outputs_and_attacks_still_work():
    from rlr_engine import to_low_rank
    from rlr_engine.workload.models import build_model, use_channels_last

    torch.manual_seed(0)
    model = to_low_rank(build_model("vgg16", 3, 10, 32), rank_fraction=0.2).eval()
    x = torch.rand(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    expected = model(x)
    use_channels_last(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # advertorch's L2 PGD breaks on channels-last inputs; the model converts inside its forward.
    acc = adversarial_accuracy(model, x, y, AttackSpec("pgd-l2", (0.0, 0.5), steps=2))
    assert set(acc) == {0.0, 0.5}
    assert list(model.state_dict()) == list(to_low_rank(build_model("vgg16", 3, 10, 32), 0.2).state_dict())


# -- the registry's stronger attacks -----------------------------------------------------------

# Test-only iteration counts (the default, STANDARD, is the published version).
QUICK = AttackBudget(apgd_iterations=10, fab_iterations=10, square_queries=300, cw_search_steps=3, cw_iterations=50)


def test_default_budget_is_autoattacks_published_standard_version():
    AutoAttack = import_pyautoattack().AutoAttack
    aa = AutoAttack(nn.Linear(2, 2), eps=0.1, norm="Linf", version="standard", device="cpu")
    assert list(aa.attacks_to_run) == list(AUTOATTACK_PARTS)
    STANDARD.apply(aa)
    assert (aa.apgd.n_iter, aa.apgd_targeted.n_iter, aa.fab.n_iter, aa.square.n_queries) == (100, 100, 100, 5000)
    QUICK.apply(aa)
    assert (aa.apgd.n_iter, aa.fab.n_iter, aa.square.n_queries) == (10, 10, 300)


def test_autoattack_lowers_accuracy_and_its_worst_case_is_at_most_each_part(trained):
    model, x, y = trained
    x, y = x[:40], y[:40]
    result = robustness(model, x, y, AttackSpec("autoattack", (0.0, 0.1)), budget=QUICK)
    clean, attacked = result.accuracy
    assert attacked < clean - 0.1
    assert [p.attack for p in result.parts] == list(AUTOATTACK_PARTS)
    after = [p.accuracy[1] for p in result.parts]
    assert after == sorted(after, reverse=True)  # each part only removes images
    assert attacked == after[-1] and all(attacked <= a for a in after)


def test_autoattack_matches_the_librarys_own_standard_evaluation(trained):
    model, x, y = trained
    x, y = x[:20], y[:20]
    ours = robustness(model, x, y, AttackSpec("autoattack", (0.1,)), budget=QUICK).accuracy[0]
    aa = import_pyautoattack().AutoAttack(model.eval(), eps=0.1, norm="Linf", version="standard", seed=0, device="cpu")
    QUICK.apply(aa)
    aa.verbose = False
    _, y_adv = aa.run_standard_evaluation(x, y, batch_size=250)
    assert ours == pytest.approx((y_adv == y).float().mean().item())


def test_restarts_never_raise_accuracy_and_are_the_per_image_worst_case(trained):
    from rlr_engine.workload.attacks import pgd_batch

    model, x, y = trained
    x, y = x[:64], y[:64]
    spec = AttackSpec("pgd-linf", (0.15,), steps=1, step_size=0.01, restarts=4)  # the start matters
    torch.manual_seed(0)
    survived = [(model(pgd_batch(model.eval(), x, y, 0.15, spec)).argmax(1) == y) for _ in range(4)]
    torch.manual_seed(0)  # the same four random starts
    four = robustness(model, x, y, spec).accuracy[0]
    singles = [s.float().mean().item() for s in survived]
    assert four == pytest.approx(torch.stack(survived).all(0).float().mean().item())
    assert all(four <= single for single in singles)


def test_the_same_seed_draws_the_same_random_starts_and_leaves_the_global_random_state_alone(trained):
    model, x, y = trained
    spec = AttackSpec("pgd-linf", (0.0, 0.15, 0.3), steps=1, step_size=0.001)  # the random start decides
    before = torch.get_rng_state()
    runs = [robustness(model, x, y, spec, seed=seed) for seed in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), before)  # a training run's data order is untouched
    assert runs[0].accuracy == runs[1].accuracy and runs[0].seed == runs[1].seed == 3
    assert runs[2].accuracy != runs[0].accuracy and runs[2].to_dict()["seed"] == 4


def test_autoattack_tells_each_part_and_how_many_images_it_attacks(trained):
    """Each part reports as it starts (0 images done) and as it ends, on the images the parts
    before it left correct."""
    model, x, y = trained
    x, y = x[:30], y[:30]
    told = []
    result = robustness(
        model, x, y, AttackSpec("autoattack", (0.1,)), budget=QUICK, part_progress=lambda *report: told.append(report)
    )
    expected, left = [], int((model.eval()(x).argmax(1) == y).sum())
    for part in result.parts:
        if left:
            expected += [(part.attack, 0.1, 0, left), (part.attack, 0.1, left, left)]
        left = round(part.accuracy[0] * len(y))
    assert told == expected and told[0][0] == "apgd-ce"


def test_carlini_wagner_lowers_accuracy_more_as_the_l2_budget_grows(trained):
    model, x, y = trained
    x, y = x[:40], y[:40]
    acc = robustness(model, x, y, AttackSpec("cw-l2", (0.0, 0.5, 2.0)), budget=QUICK).accuracy
    assert acc[2] < acc[1] < acc[0]


def test_attack_settings_that_do_not_apply_are_rejected():
    with pytest.raises(ValueError, match="restarts apply to pgd-linf, pgd-l2"):
        AttackSpec("fgsm", (0.1,), restarts=3)
    with pytest.raises(ValueError, match="in \\[0, 1\\] \\(pixel units\\) for fgsm"):
        AttackSpec("fgsm", (2.0,))
    assert AttackSpec("cw-l2", (0.0, 2.0)).eps == (0.0, 2.0)  # an L2 budget may exceed 1


class ZeroGradientRounding(nn.Module):
    """round(x): piecewise constant, so every input gradient through it is exactly zero."""

    def forward(self, x):
        return torch.round(x)


@pytest.fixture(scope="module")
def masked():
    """A digits CNN trained behind a rounding layer: as accurate as usual, but gradient attacks
    see a zero gradient everywhere."""
    torch.manual_seed(0)
    model, images, labels = train_digits_cnn(nn.Sequential(ZeroGradientRounding(), digits_cnn()))
    return model.eval(), images[:60], labels[:60]


def _flags(model, x, y):
    """Codes flagged by PGD (with its probes) beside Square, and by AutoAttack, at ε = 0.3."""
    pgd = robustness_with_checks(model, x, y, AttackSpec("pgd-linf", (0.0, 0.1)), "digits", budget=QUICK)
    square = robustness(model, x, y, AttackSpec("square", (0.0, 0.1, 0.3)), budget=QUICK)
    from rlr_engine.core.sanity import sanity_report

    records = [pgd.result.record(), *(p.record() for p in pgd.probes), square.record()]
    separate = {f.code for f in sanity_report(records, "digits").flags}
    auto = robustness_with_checks(model, x, y, AttackSpec("autoattack", (0.0, 0.3)), "digits", budget=QUICK)
    return separate, {f.code for f in auto.sanity.flags}


@pytest.mark.slow
def test_masked_gradients_raise_the_masking_flags(masked):
    model, x, y = masked
    separate, auto = _flags(model, x, y)
    assert {BLACK_BOX_WINS, HIGH_AT_LARGE_EPS} <= separate
    assert BLACK_BOX_WINS in auto


def test_healthy_model_raises_no_masking_flag(trained):
    model, x, y = trained
    separate, auto = _flags(model, x[:60], y[:60])
    assert not {BLACK_BOX_WINS, HIGH_AT_LARGE_EPS} & (separate | auto)


def test_registry_drives_cli_choices_and_preset_validation():
    from rlr_engine.cli import build_parser
    from rlr_engine.core.config import RunConfig
    from rlr_engine.core.errors import PresetError

    parser = build_parser()
    eval_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("eval"))
    attack = next(a for a in eval_parser._actions if a.dest == "attack")
    assert tuple(attack.choices) == tuple(ATTACKS)
    assert RunConfig().replace(attack="autoattack").attack == "autoattack"
    with pytest.raises(PresetError, match="cw-l2, autoattack, square"):
        RunConfig().replace(attack="nope")


# -- rlr eval ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from helpers import run_to_end, start_engine

    engine = start_engine(tmp_path_factory.mktemp("eval"), dataset="digits", method="dense", epochs=1)
    assert run_to_end(engine).state == "finished"
    return engine.run_dir


def test_eval_json_prints_one_object_with_accuracy_per_eps_and_the_flags(digits_run, capsys):
    import json

    from rlr_engine.cli import main

    assert (
        main(
            [
                "eval",
                str(digits_run),
                "--device",
                "cpu",
                "--attack",
                "pgd-linf",
                "--eps",
                "0,0.1",
                "--steps",
                "3",
                "--restarts",
                "2",
                "--samples",
                "30",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["attack"] == "pgd-linf" and out["eps"] == [0.0, 0.1] and out["samples"] == 30
    assert len(out["accuracy"]) == 2 and all(0 <= a <= 1 for a in out["accuracy"])
    assert out["restarts"] == 2 and out["steps"] == 3 and out["dataset"] == "digits"
    assert isinstance(out["flags"], list) and isinstance(out["not_checked"], list)
    assert {(p["attack"], tuple(p["eps"])) for p in out["probes"]} == {("fgsm", (0.1,)), ("pgd-linf", (0.3,))}


def test_eval_table_says_how_many_images_and_shows_the_checks(digits_run, capsys):
    from rlr_engine.cli import main

    assert main(["eval", str(digits_run), "--device", "cpu", "--eps", "0,0.1", "--samples", "25"]) == 0
    captured = capsys.readouterr()
    assert "fgsm on 25 test images" in captured.out + captured.err
    assert "not checked: black-box vs white-box" in captured.out
    assert "sanity checks: no flags" in captured.out or "⚠" in captured.out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--attack", "fgsm", "--restarts", "2"], "restarts apply to pgd-linf, pgd-l2"),
        (["--attack", "autoattack", "--steps", "5"], "--steps 5: applies to pgd-linf, pgd-l2"),
        (
            ["--attack", "fgsm", "--eps", "0,2"],
            "eps must be a non-empty list of numbers in [0, 1] (pixel units) for fgsm",
        ),
        (["--samples", "-1"], "--samples -1: must be >= 0"),
        (["--attack", "pgd-linf", "--steps", "0"], "steps must be >= 1, got 0"),
        (["--attack", "pgd-linf", "--step-size", "-0.1"], "step_size must be a finite number >= 0, got -0.1"),
        (["--attack", "pgd-linf", "--step-size", "nan"], "step_size must be a finite number >= 0, got nan"),
        (["--attack", "pgd-l2", "--step-size", "inf"], "step_size must be a finite number >= 0, got inf"),
        (["--attack", "pgd-linf", "--restarts", "0"], "restarts must be >= 1, got 0"),
    ],
)
def test_eval_rejects_settings_with_a_message_naming_them(digits_run, capsys, args, expected):
    from rlr_engine.cli import main

    assert main(["eval", str(digits_run), *args]) == 2
    assert expected in capsys.readouterr().err


def test_eval_with_an_attack_the_runs_own_budgets_do_not_fit_says_so(digits_run, tmp_path, capsys):
    import torch

    from rlr_engine.cli import main
    from rlr_engine.run.checkpoint import save_atomic

    payload = torch.load(digits_run / "checkpoint.pt", weights_only=True)
    payload["config"] = {**payload["config"], "attack": "pgd-l2", "eps": [0.0, 2.0]}  # L2 budgets over 1
    save_atomic(payload, tmp_path / "checkpoint.pt")
    assert main(["eval", str(tmp_path / "checkpoint.pt"), "--attack", "fgsm", "--samples", "10"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "eps must be a non-empty list of numbers in [0, 1] (pixel units) for fgsm, got [0.0, 2.0]" in err
    assert "give --eps for fgsm" in err


def test_eval_prints_the_same_numbers_each_time_and_the_seed_in_its_json(digits_run, capsys):
    import json

    from rlr_engine.cli import main

    def evaluate(*seed):
        args = ["eval", str(digits_run), "--attack", "pgd-linf", "--eps", "0,0.15,0.3", "--steps", "1"]
        assert main([*args, "--step-size", "0.001", "--samples", "100", "--no-probes", "--json", *seed]) == 0
        return json.loads(capsys.readouterr().out)

    first, again, other = evaluate(), evaluate(), evaluate("--seed", "5")
    assert first["seed"] == again["seed"] == 0 and other["seed"] == 5
    assert first["accuracy"] == again["accuracy"]
    assert main(["eval", str(digits_run), "--seed", "-1"]) == 2
    assert "--seed -1: must be" in capsys.readouterr().err


def test_eval_refuses_a_checkpoint_its_run_directorys_config_disagrees_with(digits_run, tmp_path, capsys):
    """A digits checkpoint copied into a Fashion-MNIST run directory is not evaluated on digits."""
    import shutil

    from rlr_engine.cli import main
    from rlr_engine.control.run_dirs import new_run_dir
    from rlr_engine.core.presets import load_preset

    other = new_run_dir(load_preset("fmnist-lenet5-tau0.1-cr80"), tmp_path)
    shutil.copy(digits_run / "checkpoint.pt", other / "checkpoint.pt")
    assert main(["eval", str(other), "--samples", "10"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "dataset = 'digits'" in err and "dataset = 'fashion-mnist'" in err and "config.toml" in err


def test_eval_warns_that_a_data_dir_its_data_set_does_not_read_is_unused(digits_run, tmp_path, capsys):
    from rlr_engine.cli import main

    assert main(["eval", str(digits_run), "--samples", "10", "--no-probes", "--data-dir", str(tmp_path)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: --data-dir {tmp_path} is not used" in err and "digits" in err
