"""A run's data and network as its config describes them: the data set (with the normalisation
the model applies), the model built, its starting weights loaded — a state dict, torchvision's
weights, or the checkpoint of an rlr run (``init_from``; a dense or a low-rank one) — and its
layers converted to low rank as the method asks.

Every method starts from the converted weights: the SVD of each starting weight gives the
factors. A resumed run or a saved model is rebuilt without starting weights; its checkpoint
holds them (and the ranks, which the loading adopts).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlr_engine.core.catalog import MODEL_INPUTS, TORCHVISION, model_source, torchvision_weights
from rlr_engine.core.config import RunConfig, validate
from rlr_engine.core.errors import CheckpointError, ModelError
from rlr_engine.core.formatting import versus_dense
from rlr_engine.method.lowrank import full_rank_of, low_rank_layers, parameter_report, to_dense, to_low_rank
from rlr_engine.run.checkpoint import FORMAT, load_checkpoint, load_model_state
from rlr_engine.workload.data import ImageData, to_float
from rlr_engine.workload.data_sources import load_data
from rlr_engine.workload.model_sources import (
    INPUT_MEAN,
    INPUT_STD,
    add_input_normalization,
    as_state_dict,
    build_source_model,
    check_outputs,
    load_state,
    read_state_dict,
    torchvision_normalization,
    torchvision_state_dict,
)
from rlr_engine.workload.models import Normalize, compile_model, use_channels_last
from rlr_engine.workload.spectra import compressible_layers


def given_normalization(config: RunConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the settings give: ``mean``/``std``, else those torchvision's weights
    were trained with; empty when neither (the data set's own, or measured)."""
    if config.mean:
        return config.mean, config.std
    weights_name = torchvision_weights(config.weights)
    source = model_source(config.model)
    if weights_name is not None and source is not None and source.kind == TORCHVISION:
        found = torchvision_normalization(source.target, weights_name, f"weights = {config.weights!r}")
        if found:
            return found
    return (), ()


def load_run_data(config: RunConfig, device: torch.device | str) -> ImageData:
    """The run's data set on ``device`` (data_sources.load_data with the run's settings)."""
    mean, std = given_normalization(config)
    return load_data(
        config.dataset,
        config.data_dir,
        config.download,
        config.val_fraction,
        config.seed,
        device,
        image_size=config.image_size,
        test_fraction=config.test_fraction,
        dataset_args=config.dataset_args,
        mean=mean,
        std=std,
    )


def build_network(
    config: RunConfig, data: ImageData, pretrained: bool = True, notes: list[str] | None = None
) -> nn.Module:
    """The config's model for ``data``: built, given its starting weights (``pretrained``: a new
    run; a resumed run or a saved model loads its checkpoint instead), converted to low rank
    when the method asks, laid out channels-last and compiled when asked. What was loaded and
    converted is appended to ``notes`` (the run's events say it)."""
    notes = [] if notes is None else notes
    model = _base_model(config, data, notes if pretrained else None)
    if pretrained:
        check_outputs(model, config.model, to_float(data.test.images[:2].cpu()), data.num_classes)
    if config.is_low_rank:
        convert(model, config)
        if pretrained:
            notes.append(_conversion_note(model, config))
    if config.channels_last:
        use_channels_last(model)
    if config.compile:
        compile_model(model)
    return model


def _base_model(config: RunConfig, data: ImageData, notes: list[str] | None) -> nn.Module:
    """The dense model with its normalisation, and its starting weights when ``notes`` is given."""
    source = model_source(config.model)
    assert source is not None  # the config checked its form
    if source.is_builtin:
        problem = MODEL_INPUTS[config.model].problem(data.info)
        if problem:
            raise ModelError(
                f"model = {config.model!r} {problem}; data set {config.dataset!r} has "
                f"{data.image_size}×{data.image_size}"
            )
    model = build_source_model(
        config.model, config.model_args, data.channels, data.num_classes, data.image_size, data.mean, data.std
    )
    checkpoint = None
    if notes is not None and config.weights:
        weights_name = torchvision_weights(config.weights)
        label = f"weights {config.weights!r}"
        if weights_name is not None:
            state = torchvision_state_dict(source.target, weights_name, f"weights = {config.weights!r}")
            notes += load_state(model, state, label, config.weights_skip_mismatched)
        else:
            payload = read_state_dict(config.weights)
            if payload.get("format") == FORMAT:
                checkpoint = config.weights  # an rlr checkpoint: loaded as init_from is, below
            else:
                state, changed = as_state_dict(payload, label)
                notes += changed
                own = (INPUT_MEAN, INPUT_STD) if not source.is_builtin else ()
                notes += load_state(model, state, label, config.weights_skip_mismatched, ignore_missing=own)
    if not source.is_builtin and data.mean is not None and data.std is not None:
        add_input_normalization(model, data.mean, data.std)
    if notes is not None and (config.init_from or checkpoint):
        notes += warm_start(model, config, data, Path(config.init_from or checkpoint or ""))
    return model


def convert(model: nn.Module, config: RunConfig) -> nn.Module:
    """Factorise the layers the config selects (lowrank_include / lowrank_exclude; the last one
    stays dense unless last_layer = "full-rank") at the ranks it asks for (rank_energy, else
    rank_fraction), from the model's current weights."""
    ranks = None
    layers = compressible_layers(model)
    if config.last_layer == "full-rank" and layers:
        last_name, last = layers[-1]
        ranks = {last_name: full_rank_of(last)}
    try:
        to_low_rank(
            model,
            config.rank_fraction,
            ranks=ranks,
            skip_last=True,
            max_rank_fraction=config.max_rank_fraction if config.is_rank_adaptive else None,
            include=config.lowrank_include,
            exclude=config.lowrank_exclude,
            rank_energy=config.rank_energy or None,
        )
    except ValueError as error:
        text = str(error)
        if text.startswith(("include pattern", "exclude pattern")):
            raise ModelError(f"lowrank_{text}") from None
        raise ModelError(f"lowrank_include = {list(config.lowrank_include)}: {text}") from None
    if not any(True for _ in low_rank_layers(model)):
        names = ", ".join(name for name, _ in layers) or "none"
        raise ModelError(
            f"method = {config.method!r} trains low-rank layers, but no layer of model = {config.model!r} is made "
            f"low-rank (its Linear and Conv2d layers: {names}; the last stays dense unless last_layer = "
            f"'full-rank', and lowrank_include / lowrank_exclude choose among the rest)"
        )
    return model


def warm_start(model: nn.Module, config: RunConfig, data: ImageData, path: Path) -> list[str]:
    """Load into the dense ``model`` the weights of the rlr run whose checkpoint is ``path`` (or
    a run directory): its network is rebuilt from its stored config, its checkpoint loaded and
    its low-rank layers multiplied out (W = U S Vᵀ), so a dense or a low-rank run can start this
    one, whatever its ranks. It must be a run of the same model (and model_args). The input
    normalisation stays this run's own: its mean and std settings, or its data's."""
    label = f"init_from {str(path)!r}" if config.init_from else f"weights {str(path)!r}"
    try:
        payload = load_checkpoint(path)
    except CheckpointError as error:  # missing, unreadable, not rlr's: said as the setting that names it
        raise ModelError(f"{label}: {error}") from None
    source = validate(payload["config"], source=f"{path} (stored config)")
    if (source.model, source.model_args) != (config.model, config.model_args):
        raise ModelError(
            f"{label}: a run of model = {source.model!r}"
            + (f" with model_args = {source.model_args}" if source.model_args else "")
            + f" cannot start model = {config.model!r}"
            + (f" with model_args = {config.model_args}" if config.model_args else "")
            + "; a warm start needs the same model"
        )
    previous = _base_model(source, data, None)
    if source.is_low_rank:
        convert(previous, source)
    load_model_state(previous, payload, path)
    low_rank = bool(list(low_rank_layers(previous)))
    to_dense(previous)
    own = _normalization_buffers(model)  # this run's (its settings', or its data's), not the other run's
    state = {k: v for k, v in previous.state_dict().items() if k not in own}
    notes = load_state(model, state, label, ignore_missing=own)
    how = "; its low-rank layers multiplied out" if low_rank else ""
    return [*notes, f"{label}: warm start from step {payload['step']} of {source.name} ({source.method_label}{how})"]


def _normalization_buffers(model: nn.Module) -> set[str]:
    """The state dict names of the buffers holding ``model``'s input normalisation: those added
    to a model of the user's, or those of rlr's own models' Normalize layer."""
    names = {name for name, _ in model.named_buffers(recurse=False) if name in (INPUT_MEAN, INPUT_STD)}
    for prefix, module in model.named_modules():
        if isinstance(module, Normalize):
            names |= {f"{prefix}.mean", f"{prefix}.std"}
    return names


def _conversion_note(model: nn.Module, config: RunConfig) -> str:
    layers = list(low_rank_layers(model))
    report = parameter_report(model)
    how = f"rank_energy {config.rank_energy:g}" if config.rank_energy else f"rank_fraction {config.rank_fraction:g}"
    return (
        f"{len(layers)} layers factorised ({how}): {report.params:,} parameters, "
        f"{versus_dense(report.compression)}; "
        + ", ".join(f"{n} {layer.out_dim}×{layer.in_dim} rank {layer.rank}" for n, layer in layers)
    )
