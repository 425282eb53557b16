"""A trained model as files a party keeps: ONNX (for any runtime) and a PyTorch
ExportedProgram (``torch.export.load(f).module()``, no Confidant code needed). Bytes,
not paths: the party runner writes them."""

from __future__ import annotations

import io
import warnings

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
