import math
from pathlib import Path

import pytest

from rlr_engine.core.errors import PresetError
from rlr_engine.core.presets import apply_overrides, available_presets, load_preset

REQUIRED = [
    "quickstart",
    "fmnist-lenet5-dense",
    "fmnist-lenet5-vanilla-cr50",
    "fmnist-lenet5-vanilla-cr80",
    "fmnist-lenet5-tau0-cr50",
    "fmnist-lenet5-tau0-cr80",
    "fmnist-lenet5-tau0.1-cr50",
    "fmnist-lenet5-tau0.1-cr80",
    "mnist-lenet5-dense",
    "cifar10-vgg16-tau0.5-cr80",
    "cifar10-wrn16-4-vanilla-cr50",
]


def test_every_shipped_preset_is_valid():
    presets = available_presets()
    assert set(REQUIRED) <= set(presets)
    for name in presets:
        config = load_preset(name)
        assert config.name == name and config.description


def test_paper_presets_carry_the_reference_hyperparameters():
    vgg = load_preset("cifar10-vgg16-tau0.5-cr80")
    assert (vgg.lr, vgg.momentum, vgg.batch_size, vgg.epochs, vgg.milestones, vgg.gamma) == (
        0.05,
        0.45,
        128,
        120,
        (70, 100),
        0.3,
    )
    assert vgg.rank_fraction == 0.2 and vgg.tau == 0.5 and vgg.last_layer == "full-rank"
    assert vgg.eps == (0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006)
    assert math.isinf(load_preset("mnist-lenet5-vanilla-cr80").tau)
    assert load_preset("mnist-lenet5-dense").method == "dense"


def write(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tau = -1\n", "tau = -1 is not allowed: must be a number in [0, inf]"),
        ('epochs = "ten"\n', "epochs = 'ten' is not allowed: must be an integer in [1, 100000]"),
        ("learning_rate = 0.1\n", "unknown key 'learning_rate'"),
        ('dataset = "imagenet"\n', "dataset = 'imagenet' is not allowed: must be one of digits"),
        ("eps = [0, 0.5, 3]\n", "eps = [0, 0.5, 3] is not allowed"),
        ('download = "yes"\n', "download = 'yes' is not allowed: must be true or false"),
        ('model = "vgg16"\n', "model 'vgg16' needs 32×32 images; data set 'digits' has 8×8"),
        ('model = "lenet5"\n', "model 'lenet5' needs images of at least 16×16"),
        ("tau = [\n", "not valid TOML"),
    ],
)
def test_bad_preset_files_name_file_key_value_and_what_is_allowed(tmp_path, text, expected):
    required = {"dataset": 'dataset = "digits"', "model": 'model = "digits-cnn"', "method": 'method = "lowrank"'}
    header = "".join(line + "\n" for key, line in required.items() if not text.startswith(f"{key} ="))
    path = write(tmp_path, text if text.startswith("tau = [") else header + text)
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert expected in str(info.value)
    assert path in str(info.value)


def test_user_file_with_inf_and_overrides(tmp_path):
    path = write(tmp_path, 'tau = inf\nepochs = 2\ndescription = "mine"\nmodel = "digits-cnn"\nmethod = "lowrank"\n')
    config = load_preset(path, ["tau=0.5", "eps=[0, 0.01]", "dataset=synthetic"])
    assert config.name == "mine" and config.tau == 0.5 and config.eps == (0.0, 0.01)
    assert config.dataset == "synthetic" and config.epochs == 2


@pytest.mark.parametrize(
    "override, expected",
    [
        ("tau", "expected key=value"),
        ("colour=red", "unknown key 'colour'"),
        ("tau=-3", "tau = -3 is not allowed"),
        ("rank_fraction=0", "rank_fraction = 0 is not allowed"),
        ("milestones=[5, -1]", "milestones"),
    ],
)
def test_bad_overrides_are_rejected_and_change_nothing(override, expected):
    config = load_preset("quickstart")
    with pytest.raises(PresetError, match=None) as info:
        apply_overrides(config, [override])
    assert expected in str(info.value)
    assert load_preset("quickstart") == config


HUGE = 10**400  # an integer no float holds


@pytest.mark.parametrize(
    "key, check, values",
    [
        ("tau", "check_tau", [-1, 0, 0.5, math.inf, HUGE]),
        ("lr", "check_lr", [0, 1e-3, 100, 101, HUGE]),
        ("truncate_theta", "check_theta", [-0.1, 0, 0.5, 1, HUGE]),
        ("beta", "check_beta", [-1, 0, 1, math.inf, HUGE]),
        ("adapt_every", "check_adapt_every", [1, 2, 100_000, 100_001, HUGE]),
    ],
)
def test_a_preset_and_a_live_command_accept_the_same_values(key, check, values):
    from rlr_engine.core import validation

    config = load_preset("fmnist-lenet5-condlr-adaptive")
    for value in values:
        try:
            getattr(validation, check)(value)
            live = True
        except ValueError:
            live = False
        try:
            config.replace(**{key: value})
            preset = True
        except PresetError:
            preset = False
        assert preset == live, (
            f"{key} = {value!r}: preset {'accepts' if preset else 'refuses'} it, "
            f"{check} {'accepts' if live else 'refuses'} it"
        )


@pytest.mark.parametrize("field", ["tau", "lr", "theta", "beta", "adapt_every"])
@pytest.mark.parametrize(
    "value",
    [HUGE, -HUGE, str(HUGE), "1e400", "9" * 5000, "nan", "", "fast"],
    ids=["huge-int", "huge-negative-int", "400-digits", "1e400", "5000-digits", "nan", "empty", "text"],
)
def test_a_live_value_no_float_holds_is_refused_naming_the_field_and_the_range(field, value):
    from rlr_engine.core import validation

    allowed = (
        validation.ADAPT_EVERY.allowed("an integer")
        if field == "adapt_every"
        else getattr(validation, field.upper()).allowed()
    )
    with pytest.raises(ValueError) as refused:
        getattr(validation, f"check_{field}")(value)
    message = str(refused.value)
    assert message.startswith(f"{field} must be {allowed}, got ")
    assert len(message) < 200, "a long value is cut, not repeated whole"


def test_typed_inf_is_infinity_but_a_finite_number_too_large_for_a_float_is_refused():
    from rlr_engine.core.validation import check_tau, parse_eps_text

    assert check_tau("inf") == check_tau(" Infinity ") == check_tau("∞") == math.inf
    for typed in ("1e400", "1" + "0" * 400):
        with pytest.raises(ValueError, match="tau must be"):
            check_tau(typed)
    for typed in ("0 inf", "0 1e400"):
        with pytest.raises(ValueError, match="finite numbers >= 0"):
            parse_eps_text(typed)
    # --set follows the same rule as the dashboard
    assert load_preset("quickstart", ["tau=inf"]).tau == load_preset("quickstart", ["tau=+inf"]).tau == math.inf
    with pytest.raises(PresetError, match="tau = 1e400 is not allowed"):
        load_preset("quickstart", ["tau=1e400"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("tau=1" + "0" * 400, "tau"),
        ("epochs=1" + "0" * 400, "epochs"),
        ("eps=[0, 1" + "0" * 400 + "]", "eps"),
        ("seed=" + "9" * 5000, "seed"),
        ("mean=[1" + "0" * 400 + "]", "mean"),
        ("mean=[-1" + "0" * 400 + "]", "mean"),
        ("std=[1" + "0" * 400 + "]", "std"),
    ],
    ids=[
        "tau-400-digits",
        "epochs-400-digits",
        "eps-400-digits",
        "seed-5000-digits",
        "mean-400-digits",
        "mean-negative-400-digits",
        "std-400-digits",
    ],
)
def test_a_number_too_large_for_a_float_in_an_override_is_a_preset_error_naming_the_key(override, key):
    with pytest.raises(PresetError) as refused:
        load_preset("quickstart", [override])
    message = str(refused.value)
    assert f": {key} = " in message and "is not allowed: must be" in message and len(message) < 300


def test_a_preset_file_with_an_integer_of_too_many_digits_is_a_preset_error(tmp_path):
    path = write(tmp_path, 'dataset = "digits"\nmodel = "digits-cnn"\nmethod = "lowrank"\nseed = ' + "9" * 5000)
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(str(path))


@pytest.mark.parametrize("attack", ["fgsm", "pgd-linf", "pgd-l2", "cw-l2", "autoattack", "square"])
def test_a_preset_and_the_attack_itself_accept_the_same_budgets(attack):
    from rlr_engine.core.config import AttackSpec

    for eps in ([0, 0.5], [0, 1], [0, 2.0], [0, 30], [0, -1], [0, math.inf]):
        try:
            AttackSpec(attack, tuple(eps))
            live = True
        except ValueError:
            live = False
        try:
            config = load_preset("quickstart", [f"attack={attack}", f"eps={eps!r}"])
            preset = True
        except PresetError:
            preset = False
        assert preset == live, (
            f"{attack} eps = {eps}: preset {'accepts' if preset else 'refuses'} it, "
            f"the attack {'accepts' if live else 'refuses'} it"
        )
        if preset:
            assert config.attack_spec().eps == tuple(eps)


def test_an_l_inf_budget_over_1_names_eps_the_value_and_the_attacks_range():
    with pytest.raises(PresetError) as refused:
        load_preset("quickstart", ["eps=[0, 2.0]"])  # quickstart attacks with fgsm
    assert "eps = [0, 2] is not allowed with attack = 'fgsm': must be a non-empty list of numbers in [0, 1]" in str(
        refused.value
    )
    assert load_preset("quickstart", ["attack=cw-l2", "eps=[0, 2.0]"]).eps == (0.0, 2.0)


@pytest.mark.parametrize("name", ["a/b", "../../escaped", "..", ".hidden", "", "x" * 65, "a b", "tab\there", 5])
def test_a_run_name_that_is_no_plain_directory_name_is_refused(name):
    override = f"name={name}" if not isinstance(name, str) else f"name={name!r}".replace("'", '"')
    with pytest.raises(PresetError) as refused:
        load_preset("quickstart", [override])
    message = str(refused.value)
    assert ": name = " in message and "letters, digits, '.', '_' or '-', not starting with '.'" in message


def test_a_run_name_of_letters_digits_dots_dashes_and_underscores_is_allowed():
    for name in ("quickstart", "fmnist-lenet5-tau0.1-cr50", "my_run.2", "x" * 64):
        assert load_preset("quickstart", [f"name={name}"]).name == name


def test_a_preset_file_whose_file_name_is_no_plain_directory_name_names_its_runs_after_it(tmp_path):
    path = write(tmp_path, 'dataset = "digits"\nmodel = "digits-cnn"\nmethod = "lowrank"\n', name="my run.toml")
    assert load_preset(path).name == "my-run"  # the user did not choose that name: no refusal
    assert load_preset(path, ["name=mine"]).name == "mine"
    with pytest.raises(PresetError, match="name = 'a b' is not allowed"):  # one they chose is checked
        load_preset(path, ['name="a b"'])


def test_a_run_written_before_names_were_checked_stays_readable_and_resumable(tmp_path):
    from rlr_engine.control.run_dirs import read_run_config, write_config

    write_config(tmp_path, load_preset("quickstart"))
    config_file = tmp_path / "config.toml"
    config_file.write_text(config_file.read_text().replace('name = "quickstart"', 'name = "my run/1"'))
    assert read_run_config(tmp_path).name == "my-run-1"


def test_missing_preset_lists_the_available_ones():
    with pytest.raises(PresetError, match=r"unknown preset 'nope'.*quickstart"):
        load_preset("nope")
    with pytest.raises(PresetError, match="does not exist"):
        load_preset("/no/such/file.toml")


@pytest.mark.parametrize("missing", ["dataset", "model", "method"])
def test_a_preset_file_must_name_its_dataset_model_and_method(tmp_path, missing):
    lines = [
        line
        for line in (Path(available_presets()["fmnist-lenet5-tau0.1-cr80"]).read_text().splitlines())
        if not line.startswith(f"{missing} =")
    ]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert f"missing required key {missing}" in str(info.value) and path in str(info.value)
    # an override may supply it
    value = {"dataset": "fashion-mnist", "model": "lenet5", "method": "lowrank"}[missing]
    assert getattr(load_preset(path, [f"{missing}={value}"]), missing) == value


def test_a_model_that_cannot_take_the_data_is_rejected_with_the_sets_that_fit(tmp_path):
    path = write(tmp_path, 'dataset = "digits"\nmodel = "lenet5"\nmethod = "lowrank"\n')
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert "data sets that fit: mnist, fashion-mnist" in str(info.value)
    assert load_preset(path, ["dataset=fashion-mnist"]).dataset == "fashion-mnist"


@pytest.mark.parametrize("width", [80, 60])
def test_rlr_presets_never_wraps_a_preset_name(monkeypatch, width):
    import io

    from rich.console import Console

    from rlr_engine import cli

    out = io.StringIO()
    monkeypatch.setattr(cli.presets, "console", Console(file=out, width=width, no_color=True))
    assert cli.main(["presets"]) == 0
    first_words = {line.split()[0] for line in out.getvalue().splitlines() if line and not line[0].isspace()}
    assert set(available_presets()) <= first_words


def test_rank_adaptive_presets_carry_their_method_settings():
    robust = load_preset("fmnist-lenet5-robust-dlrt")
    assert robust.is_rank_adaptive and robust.is_low_rank and robust.method == "robust-dlrt"
    assert (robust.adapt_every, robust.core_optimizer, robust.min_rank) == (10, "sgd", 2)
    assert robust.rank_fraction < robust.max_rank_fraction and robust.beta > 0
    conditioned = load_preset("fmnist-lenet5-condlr-adaptive")
    assert conditioned.method == "condlr-adaptive" and conditioned.tau == 0.1
    assert conditioned.method_label == "CondLR-adaptive τ=0.1"
    for name in ("cifar10-vgg16-robust-dlrt", "cifar10-vgg16-condlr-adaptive"):
        assert load_preset(name).model == "vgg16"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            'method = "dlrt"\n',
            "method = 'dlrt' is not allowed: must be one of dense, lowrank, robust-dlrt, condlr-adaptive",
        ),
        ("adapt_every = 1\n", "adapt_every = 1 is not allowed: must be an integer in [2, 100000]"),
        ("beta = -0.5\n", "beta = -0.5 is not allowed: must be a number in [0, inf)"),
        ("beta = inf\n", "beta = inf is not allowed"),
        ('core_optimizer = "lamb"\n', "core_optimizer = 'lamb' is not allowed: must be one of sgd, adamw"),
        ("max_rank_fraction = 0\n", "max_rank_fraction = 0 is not allowed: must be a number in (0, 1]"),
        (
            'method = "robust-dlrt"\nrank_fraction = 0.5\nmax_rank_fraction = 0.3\n',
            "max_rank_fraction = 0.3 is not allowed: must be >= rank_fraction = 0.5",
        ),
        (
            'method = "condlr-adaptive"\ntruncate_every = 2\n',
            "truncate_every = 2 is not allowed with method = 'condlr-adaptive'",
        ),
    ],
)
def test_bad_rank_adaptive_settings_name_the_key_the_value_and_what_is_allowed(tmp_path, text, expected):
    header = 'dataset = "digits"\nmodel = "digits-cnn"\n' + ("" if "method" in text else 'method = "robust-dlrt"\n')
    path = write(tmp_path, header + text)
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert expected in str(info.value)


def test_a_directory_given_as_a_preset_is_called_a_directory(tmp_path):
    with pytest.raises(PresetError, match="is a directory, not a preset file"):
        load_preset(str(tmp_path))


def test_a_number_literal_too_large_for_a_float_is_refused_alike_on_the_socket_in_a_file_and_in_set(tmp_path):
    """1e400 is no ∞ wherever it is written; ∞ is spelled as each format spells it."""
    from rlr_engine.control.protocol import decode
    from rlr_engine.control.records import SetTau, command_from_dict
    from rlr_engine.core.validation import check_tau

    def from_socket(value: str):
        line = '{"type": "command", "id": "1", "command": {"kind": "set_tau", "tau": ' + value + "}}"
        return command_from_dict(decode(line.encode())["command"])

    preset = 'dataset = "digits"\nmodel = "digits-cnn"\nmethod = "lowrank"\ntau = '
    with pytest.raises(ValueError, match=r"set_tau\.tau = 1e400 is not allowed"):
        from_socket("1e400")
    with pytest.raises(PresetError, match="tau = 1e400 is not allowed"):
        load_preset(str(write(tmp_path, preset + "1e400")))
    with pytest.raises(PresetError, match="tau = 1e400 is not allowed"):
        load_preset("quickstart", ["tau=1e400"])
    with pytest.raises(ValueError, match="tau must be"):
        check_tau("1e400")  # typed in the dashboard
    assert from_socket("Infinity") == SetTau(tau=math.inf)
    assert load_preset(str(write(tmp_path, preset + "inf"))).tau == math.inf


def test_a_range_states_its_integer_bounds_exactly():
    from rlr_engine.core.config import SEED_RANGE
    from rlr_engine.core.validation import NumberRange

    assert SEED_RANGE.allowed("an integer") == "an integer in [0, 2147483647]"
    assert NumberRange(0, 10**9).allowed() == "a number in [0, 1e+09]"
    assert NumberRange(0.5, math.inf, high_open=True).allowed() == "a number in [0.5, inf)"
    with pytest.raises(PresetError, match=r"seed = -1 is not allowed: must be an integer in \[0, 2147483647\]"):
        load_preset("quickstart", ["seed=-1"])
