"""A trained model as files a party keeps: ONNX (for any runtime) and a PyTorch
ExportedProgram (``torch.export.load(f).module()``, no Confidant code needed). Bytes,
not paths: the party runner writes them."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch


def model_files(model: torch.nn.Module, features: int, stem: str = "model") -> dict[str, bytes]:
    """{stem.onnx, stem.pt2} for ``model`` taking (rows, features) to class logits."""
    model = model.eval()
    example = torch.zeros(1, features)
    onnx = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter (torch is pinned at 2.13): milliseconds and no
        # extra package, where the torch.export-based one needs onnxscript and ~2 s.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), onnx, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "rows"}, "logits": {0: "rows"}}, dynamo=False)
    program = io.BytesIO()
    rows = torch.export.Dim("rows")
    torch.export.save(torch.export.export(model, (torch.zeros(2, features),),
                                          dynamic_shapes=({0: rows},)), program)
    return {f"{stem}.onnx": onnx.getvalue(), f"{stem}.pt2": program.getvalue()}


MODEL_FORMATS = (".onnx", ".pt")


class ModelFileError(ValueError):
    """A model file that cannot answer CaPC queries under CKKS; the message says why."""


def load_model(path: str | Path, features: int, classes: int) -> torch.nn.Sequential:
    """A party's own model, as HE-friendly layers for ``features`` inputs and ``classes``
    scores, refused at load time when CKKS cannot evaluate it. ``.onnx``: from any
    framework (learning.onnx_import); ``.pt``: ``{"architecture": NAME, "state_dict": ...}``
    saved with torch.save, NAME one of learning.models.ARCHITECTURES."""
    import he

    from .models import ARCHITECTURES, build_model
    from .onnx_import import OnnxImportError, import_onnx

    path = Path(path)
    if path.suffix not in MODEL_FORMATS:
        raise ModelFileError(f"format '{path.suffix}' is not supported; use .onnx (any framework) "
                             "or .pt (a state dict with its architecture)")
    if not path.is_file():
        raise ModelFileError("does not exist")
    if path.suffix == ".onnx":
        try:
            model = import_onnx(path.read_bytes(), features, classes)
        except OnnxImportError as e:
            raise ModelFileError(str(e)) from None
    else:
        try:
            saved = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - pickle and zip errors of several kinds
            raise ModelFileError(f"is not a readable PyTorch file ({e})") from None
        arch = saved.get("architecture") if isinstance(saved, dict) else None
        if arch not in ARCHITECTURES or not isinstance(saved.get("state_dict"), dict):
            raise ModelFileError("a .pt model holds {'architecture': NAME, 'state_dict': ...} with "
                                 f"NAME one of {', '.join(sorted(ARCHITECTURES))}; for any other "
                                 "architecture export ONNX")
        model = build_model(arch, features, classes, seed=0)
        try:
            model.load_state_dict(saved["state_dict"])
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise ModelFileError(f"its weights do not fit {arch} with {features} features and "
                                 f"{classes} classes ({first})") from None
    try:
        he.compile(model.eval(), (features,))
    except he.HEError as e:
        raise ModelFileError(f"cannot be evaluated under CKKS: {e}") from None
    return model.eval()
