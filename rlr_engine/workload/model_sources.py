"""Networks from outside rlr: a torchvision builder, or a factory of the user's (in an importable
module or a .py file) called with ``model_args``; the weights loaded into them (a state dict, or
torchvision's own); and the input normalisation added to them, so every model takes [0, 1]
pixels and attacks measure ε in pixel units.

Every problem is a ModelError naming the setting, the value and what is wrong, in one line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from rlr_engine.core.catalog import TORCHVISION, ModelSource, model_source
from rlr_engine.core.errors import ModelError, first_line
from rlr_engine.workload.data import directories, remove_empty_directories_since
from rlr_engine.workload.models import build_model

# The buffers of the input normalisation added to a model of the user's (see add_input_normalization).
INPUT_MEAN, INPUT_STD = "rlr_input_mean", "rlr_input_std"
SHOWN_NAMES = 6  # parameter names listed per kind of mismatch


def build_source_model(
    spec: str,
    model_args: Mapping[str, Any],
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """The model ``spec`` names (catalog.model_source), freshly initialised.

    rlr's own models take the data's shape and normalise their input themselves (``mean``,
    ``std``); a torchvision builder or a factory is called with ``model_args`` only, and gets no
    normalisation here: ``add_input_normalization`` adds it once its weights are loaded."""
    source = model_source(spec)
    if source is None:
        raise ModelError(f"model = {spec!r} is not a model rlr can build")
    if source.is_builtin:
        return build_model(spec, in_channels, num_classes, image_size, mean, std)
    if source.kind == TORCHVISION:
        return _torchvision_model(spec, source.target, model_args)
    return _call_factory(spec, _factory(spec, source), model_args)


def _torchvision_model(spec: str, name: str, model_args: Mapping[str, Any]) -> nn.Module:
    import torchvision.models as tvm

    if "weights" in model_args:
        raise ModelError(
            f'model_args = {dict(model_args)}: give torchvision\'s weights as weights = "torchvision:DEFAULT"'
        )
    try:
        builder = tvm.get_model_builder(name)
    except ValueError:
        known = tvm.list_models(module=tvm)
        raise ModelError(
            f"model = {spec!r}: torchvision has no model {name!r} (its classification models: "
            f"{', '.join(known[:10])}, … {len(known)} in all; torchvision.models.list_models() lists every one)"
        ) from None
    try:
        return builder(**model_args)
    except (TypeError, ValueError) as error:
        raise ModelError(f"model_args = {dict(model_args)} do not fit {spec}: {first_line(error)}") from None


def _factory(spec: str, source: ModelSource) -> Any:
    """The factory ``source`` names: an attribute of a module imported by name (the working
    directory is searched after the installed packages) or of a .py file."""
    if source.kind == "file":
        module = _module_from_file(spec, Path(source.target))
    else:
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())  # `rlr` is a console script: Python did not add it
        try:
            module = importlib.import_module(source.target)
        except ModuleNotFoundError as error:
            if error.name and source.target.startswith(error.name):
                raise ModelError(
                    f"model = {spec!r}: no module named {error.name!r} (install it, run from the folder that holds "
                    f"it, or give the file: path/to/file.py:{source.attr})"
                ) from None
            raise ModelError(f"model = {spec!r}: importing {source.target} failed: {first_line(error)}") from None
        except Exception as error:  # the module itself raised while importing
            raise ModelError(f"model = {spec!r}: importing {source.target} failed: {_described(error)}") from None
    factory = getattr(module, source.attr, None)
    if factory is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ModelError(
            f"model = {spec!r}: {source.target} has no {source.attr!r}"
            + (f" (it defines {', '.join(public[:8])})" if public else "")
        )
    if not callable(factory):
        raise ModelError(f"model = {spec!r}: {source.attr} is a {type(factory).__name__}, not a function or class")
    return factory


def _module_from_file(spec: str, path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelError(f"model = {spec!r}: no such file {path}")
    # One module per file, under a name of its own (so two files named model.py do not collide).
    name = f"rlr_model_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ModelError(f"model = {spec!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        loader_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise ModelError(f"model = {spec!r}: importing {path} failed: {_described(error)}") from None
    return module


def _call_factory(spec: str, factory: Any, model_args: Mapping[str, Any]) -> nn.Module:
    try:
        inspect.signature(factory).bind(**model_args)
    except TypeError as error:
        takes = _parameters(factory)
        raise ModelError(
            f"model_args = {dict(model_args)} do not fit {spec}: {error}" + (f" (it takes {takes})" if takes else "")
        ) from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass
    try:
        model = factory(**model_args)
    except Exception as error:
        raise ModelError(f"model = {spec!r}: the factory raised {_described(error)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model = {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _parameters(factory: Any) -> str:
    try:
        return ", ".join(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return ""


# -- weights -------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The object saved in ``path``, loaded with ``weights_only`` (tensors and plain containers,
    no code); ModelError when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights = {str(path)!r}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(
            f"weights = {str(path)!r}: cannot be read as tensors ({first_line(error)}); save a state dict with "
            f"torch.save(model.state_dict(), FILE)"
        ) from None
    if not isinstance(payload, dict):
        raise ModelError(f"weights = {str(path)!r}: holds a {type(payload).__name__}, not a state dict")
    return payload


def as_state_dict(payload: Mapping[str, Any], label: str) -> tuple[dict[str, Tensor], list[str]]:
    """``payload`` as a state dict (name → tensor), with the ``module.`` prefix that
    DistributedDataParallel adds stripped; returns it and notes on what was changed."""
    if not payload or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()):
        raise ModelError(
            f"{label}: not a state dict (names → tensors) nor an rlr checkpoint; save one with "
            f"torch.save(model.state_dict(), FILE)"
        )
    state = dict(payload)
    if all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}, [
            f"{label}: the 'module.' prefix of a DistributedDataParallel state dict was removed"
        ]
    return state, []


def torchvision_weights_entry(model_name: str, weights_name: str, label: str) -> Any:
    """torchvision's weights entry ``weights_name`` ("DEFAULT", "IMAGENET1K_V1") of ``model_name``."""
    import torchvision.models as tvm

    try:
        entries = tvm.get_model_weights(model_name)
    except ValueError:
        raise ModelError(f"{label}: torchvision has no weights for model {model_name!r}") from None
    try:
        return entries[weights_name]
    except KeyError:
        names = ", ".join(dict.fromkeys(["DEFAULT", *entries.__members__]))  # DEFAULT is also a member
        raise ModelError(
            f"{label}: torchvision's {model_name} has no weights {weights_name!r} (it has {names})"
        ) from None


def torchvision_normalization(model_name: str, weights_name: str, label: str) -> tuple[tuple, tuple] | None:
    """The mean and std the model was trained with under torchvision's weights (their
    transforms), or None when they name none. Reads no file."""
    transforms = torchvision_weights_entry(model_name, weights_name, label).transforms()
    mean, std = getattr(transforms, "mean", None), getattr(transforms, "std", None)
    return (tuple(mean), tuple(std)) if mean and std else None


def torchvision_state_dict(model_name: str, weights_name: str, label: str) -> dict[str, Tensor]:
    """torchvision's weights, from torch.hub's cache (downloaded there when missing and online).
    Offline, the ModelError names the file to place and where."""
    entry = torchvision_weights_entry(model_name, weights_name, label)
    hub = Path(torch.hub.get_dir())
    target = hub / "checkpoints" / os.path.basename(entry.url)
    home = hub.parent  # TORCH_HOME: torch.hub makes it with the cache folders
    before = directories(home)
    try:
        return entry.get_state_dict(progress=False)
    except Exception as error:  # URLError, OSError, a truncated download (RuntimeError)
        remove_empty_directories_since(home, before)  # the cache folders the attempt made
        raise ModelError(
            f"{label}: torchvision's {model_name} weights are not in {target.parent} and could not be "
            f"downloaded ({first_line(error)}); place {target.name} there (from {entry.url})"
        ) from None


def load_state(
    model: nn.Module,
    state: Mapping[str, Tensor],
    label: str,
    skip_mismatched: bool = False,
    ignore_missing: Iterable[str] = (),
) -> list[str]:
    """Load ``state`` into ``model``, all of it and only it: ModelError listing the missing
    names, the names the model lacks and the shapes that differ, in one line. With
    ``skip_mismatched`` the parameters whose shapes differ are left as initialised (a new
    classifier head) and named in the returned notes. ``ignore_missing``: names the model may
    have beyond ``state`` (its own normalisation buffers)."""
    own = model.state_dict()
    ignored = set(ignore_missing)
    missing = [k for k in own if k not in state and k not in ignored]
    unexpected = [k for k in state if k not in own]
    differ = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing from them: {_names(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_names(unexpected)}")
    if differ and not skip_mismatched:
        shapes = [f"{k} {_shape(own[k])} in the model, {_shape(state[k])} in the weights" for k in differ]
        problems.append(f"shapes differ: {_names(shapes)}")
    if problems:
        hint = " (weights_skip_mismatched = true leaves those layers as initialised)" if differ and not missing else ""
        raise ModelError(f"{label} do not fit the model: {'; '.join(problems)}{hint}")
    kept = {k: v for k, v in state.items() if k not in differ}
    model.load_state_dict(kept, strict=False)
    notes = [f"{label}: loaded {len(kept)} tensors"]
    if differ:
        notes.append(f"{label}: left as initialised (shapes differ): {_names(differ)}")
    return notes


def _shape(tensor: Tensor) -> str:
    return "×".join(map(str, tensor.shape)) or "scalar"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f", … ({len(names)} in all)" if len(names) > SHOWN_NAMES else "")


# -- input normalisation -------------------------------------------------------------------------
def add_input_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Make ``model`` take [0, 1] pixels: its input becomes (x − mean) / std per channel, in place.

    Done with two buffers on the model (``rlr_input_mean``, ``rlr_input_std``: saved in its
    state dict, moved with it) and a forward pre-hook, not with a wrapping module: the model's
    module names stay the user's own (``layer3.0.conv1``, as lowrank_include names them), and a
    Sequential runs every child it holds, so an added child module would run as a layer.
    torch.export and the ONNX exporter trace the hook like the rest of the forward."""
    model.register_buffer(INPUT_MEAN, torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    model.register_buffer(INPUT_STD, torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    model.register_forward_pre_hook(_normalize_input)
    return model


def _normalize_input(module: nn.Module, args: tuple) -> tuple:
    mean, std = getattr(module, INPUT_MEAN), getattr(module, INPUT_STD)
    return ((args[0] - mean) / std, *args[1:])


@torch.no_grad()
def check_outputs(model: nn.Module, spec: str, images: Tensor, classes: int) -> None:
    """Run ``model`` (in eval mode) on a couple of [0, 1] images: ModelError when it cannot take
    them or does not return one score per class."""
    was_training = model.training
    model.eval()
    try:
        out = model(images)
    except Exception as error:
        shape = "×".join(map(str, images.shape[1:]))
        raise ModelError(f"model = {spec!r} cannot take the data's {shape} images: {first_line(error)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (len(images), classes):
        got = _shape(out) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(
            f"model = {spec!r} returns {got} for {len(images)} images; the data have {classes} classes, so it must "
            f"return {len(images)}×{classes} scores (e.g. model_args = {{num_classes = {classes}}})"
        )


def _described(error: BaseException) -> str:
    """``Type: message`` of an exception raised in the user's code, with where it was raised."""
    frames = [f for f in _frames(error) if "rlr_engine" not in f.filename and not f.filename.startswith("<")]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {first_line(error)}{where}"


def _frames(error: BaseException) -> list:
    import traceback

    return list(traceback.extract_tb(error.__traceback__))
