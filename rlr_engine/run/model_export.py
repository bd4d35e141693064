"""A run's trained model as a file that runs without rlr: a ``torch.export`` program (.pt2;
``torch.export.load(FILE).module()`` runs it with torch alone) or an ONNX file (torch's ONNX
exporter; any ONNX runtime runs it). The factors stay factors (two small matrix products or
convolutions per layer) unless ``merge`` multiplies them back into dense weights.

What is written is checked before it replaces the target: loaded back and run on a batch of
test images beside the run's model, then its test accuracy measured. The export takes [0, 1]
pixels, like the run's model (the normalisation is inside), with any batch size.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rlr_engine.core.errors import UserError, first_line
from rlr_engine.method.lowrank import low_rank_layers, to_dense
from rlr_engine.run.saved_model import load_evaluation_target
from rlr_engine.workload.data import to_float

CHECK_BATCH = 256  # test images the written file and the run's model are compared on
TOLERANCE = 1e-4  # largest difference of their outputs, relative to the largest output
BATCH = 1000  # images per forward when measuring accuracy


class ExportFailed(UserError):
    """The written model does not compute what the run's model computes (nothing is kept)."""


@dataclass(frozen=True)
class ExportReport:
    """What was written: the file, its format, whether the factors were merged, its parameter
    count and size, the largest difference of its outputs from the run's model on the check
    batch, and the test accuracy of the file and of the run's model."""

    path: Path
    kind: str
    merged: bool
    params: int
    size_bytes: int
    max_difference: float
    accuracy: float
    run_accuracy: float
    images: int


@dataclass(frozen=True)
class ExportSource:
    """A run's model ready to export (CPU, eval mode, no compile) and its test set."""

    name: str
    step: int
    model: nn.Module
    images: Tensor
    labels: Tensor

    @classmethod
    def load(cls, run_dir: str | Path, merge: bool) -> ExportSource:
        config, step, model, images, labels = load_evaluation_target(Path(run_dir), device="cpu")
        if getattr(model, "_compiled_call_impl", None) is not None:
            model._compiled_call_impl = None  # export traces the module itself, not a compiled wrapper
        for _, layer in list(low_rank_layers(model)):
            layer.release_spare_storage()  # only the live rank is exported
        if merge:
            to_dense(model)
        return cls(config.name, step, model.eval(), images, labels)

    def example(self) -> Tensor:
        return to_float(self.images[: min(CHECK_BATCH, len(self.images))])


def export_program(source: ExportSource, target: Path, merged: bool) -> ExportReport:
    """Write ``source.model`` as a torch.export program to ``target``, checked."""

    def write(path: Path) -> Callable[[Tensor], Tensor]:
        program = torch.export.export(source.model, (source.example(),), dynamic_shapes=_dynamic_batch())
        program.example_inputs = None  # the check batch is not part of the model
        torch.export.save(program, str(path))
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)

    return _write_checked(source, target, "torch.export program", merged, write)


def export_onnx(source: ExportSource, target: Path, merged: bool) -> ExportReport:
    """Write ``source.model`` as an ONNX file to ``target`` (torch's dynamo-based exporter),
    checked with onnx's checker and run with onnxruntime. The weights are stored inside the one
    file (no external data file beside it), which holds models up to protobuf's 2 GB."""
    import onnx
    import onnxruntime

    def write(path: Path) -> Callable[[Tensor], Tensor]:
        torch.onnx.export(
            source.model,
            (source.example(),),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=_dynamic_batch(),
            input_names=["pixels"],
            output_names=["logits"],
            verbose=False,
        )
        onnx.checker.check_model(str(path), full_check=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return _write_checked(source, target, "ONNX", merged, write)


def _dynamic_batch() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim.AUTO},)


@torch.no_grad()
def _write_checked(
    source: ExportSource, target: Path, kind: str, merged: bool, write: Callable[[Path], Callable[[Tensor], Tensor]]
) -> ExportReport:
    """Write through ``write`` (which returns the written file's forward) to a temporary file
    beside ``target``, compare, measure, and only then rename it over ``target``."""
    # A folder of its own beside the target, holding a file of the target's name: torch.export
    # names the archive's inner folder after the file.
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = folder / target.name
    try:
        try:
            forward = write(tmp)
        except OSError:
            raise  # the target cannot be written: the command line says so
        except Exception as error:  # an operation the exporter cannot trace, a check the file fails
            raise ExportFailed(
                f"the run's model cannot be exported ({kind}): {type(error).__name__}: {first_line(error)}; "
                f"nothing was written to {target}"
            ) from error
        x = source.example()
        expected, got = source.model(x), forward(x)
        scale = max(float(expected.abs().max()), 1.0)
        difference = float((got - expected).abs().max())
        if not difference <= TOLERANCE * scale:
            raise ExportFailed(
                f"the {kind} file computes other outputs than the run's model (largest difference {difference:.3g} "
                f"on {len(x)} test images); nothing was written to {target}"
            )
        accuracy = _accuracy(forward, source.images, source.labels)
        run_accuracy = _accuracy(source.model, source.images, source.labels)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ExportReport(
        target,
        kind,
        merged,
        sum(p.numel() for p in source.model.parameters()),
        target.stat().st_size,
        difference,
        accuracy,
        run_accuracy,
        len(source.labels),
    )


def _accuracy(forward: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor) -> float:
    correct = 0
    for start in range(0, len(labels), BATCH):
        logits = forward(to_float(images[start : start + BATCH]))
        correct += int((logits.argmax(1) == labels[start : start + BATCH]).sum())
    return correct / max(len(labels), 1)
