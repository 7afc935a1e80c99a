"""What Triton's image clients read from a model's configuration before they send a picture:
the image input's layout (``format``: ``FORMAT_NCHW`` or ``FORMAT_NHWC``), without which they
refuse the model. A ``config.pbtxt``'s ``format``, a ``config.toml`` input's ``format`` and an
image classifier's ``[image] layout`` are answered in the config, over HTTP and gRPC, and a
picture laid out by it is classified with the classification extension, as those clients do."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

_EXTRA = "the gRPC protocol and config.pbtxt need the grpc extra: pip install -e '.[grpc]'"
pytest.importorskip("tritonclient.grpc", reason=_EXTRA)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from tests.fixtures.live_server import live_server  # noqa: E402
from tests.fixtures.onnx_models import tiny_classifier  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

# As Triton keeps an unbatched image model: the file's batch of one reshaped away.
UNBATCHED_PBTXT = """
name: "unbatched"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "image", data_type: TYPE_FP32, format: FORMAT_NCHW, dims: [ 3, 8, 8 ],
          reshape { shape: [ 1, 3, 8, 8 ] } } ]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 3 ], reshape { shape: [ 1, 3 ] },
           label_filename: "labels.txt" } ]
"""

BATCHED_TOML = """
platform = "onnx"
max_batch_size = 4
labels = "labels.txt"
[[inputs]]
name = "image"
datatype = "FP32"
dims = [3, 8, 8]
format = "NCHW"
[[outputs]]
name = "logits"
datatype = "FP32"
dims = [3]
"""


class Served:
    def __init__(self, http: str, grpc: str) -> None:
        self.http = http
        self.grpc = grpc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("layout") / "models"
    classifier = 'platform = "onnx"\nlabels = "labels.txt"\n[image]\nsize = 8\n'
    misdeclared = BATCHED_TOML.replace("dims = [3]", 'dims = [3]\nformat = "NHWC"')
    for name, config_file, config in (
        ("unbatched", "config.pbtxt", UNBATCHED_PBTXT),
        ("batched", "config.toml", BATCHED_TOML),
        ("colours", "config.toml", classifier),
        ("misdeclared", "config.toml", misdeclared),
    ):
        tiny_classifier(root / name / "1" / "model.onnx", size=8)
        (root / name / "labels.txt").write_text("red\ngreen\nblue\n")
        (root / name / config_file).write_text(config)
    port = free_port()
    env = {"SLUICEWAY_MODEL_REPOSITORY": str(root), "SLUICEWAY_GRPC_PORT": str(port)}
    with live_server(env) as url:
        yield Served(url.removeprefix("http://"), f"127.0.0.1:{port}")


@pytest.mark.parametrize("model", ["unbatched", "batched", "colours"])
def test_the_config_says_each_image_inputs_layout(server: Served, model: str) -> None:
    http = httpclient.InferenceServerClient(server.http)
    (image,) = http.get_model_config(model)["input"]
    assert image["format"] == "FORMAT_NCHW"
    rpc = grpcclient.InferenceServerClient(server.grpc)
    (image,) = rpc.get_model_config(model).config.input
    assert image.format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert "format" not in http.get_model_config(model)["output"][0]  # an input's only


def test_a_picture_laid_out_by_the_config_is_classified(server: Served) -> None:
    """Triton's image client's steps: metadata and config, then the picture in the layout the
    config names, the top classes asked for by the classification extension."""
    rpc = grpcclient.InferenceServerClient(server.grpc)
    metadata = rpc.get_model_metadata("unbatched")
    config = rpc.get_model_config("unbatched").config
    assert config.max_batch_size == 0 and list(metadata.inputs[0].shape) == [3, 8, 8]
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 1.0
    pixels = red.transpose(2, 0, 1)  # HWC → CHW, as the config says
    image = grpcclient.InferInput(metadata.inputs[0].name, [3, 8, 8], "FP32")
    image.set_data_from_numpy(pixels)
    wanted = grpcclient.InferRequestedOutput(metadata.outputs[0].name, class_count=3)
    result = rpc.infer("unbatched", [image], outputs=[wanted])
    classes = result.as_numpy("logits")
    assert classes is not None and classes.shape == (3,)
    labels = sorted(entry.decode().split(":")[2] for entry in classes)
    assert labels == ["blue", "green", "red"]


def test_an_output_has_no_layout(server: Served) -> None:
    http = httpclient.InferenceServerClient(server.http)
    assert not http.is_model_ready("misdeclared")
    (entry,) = [e for e in http.get_model_repository_index() if e["name"] == "misdeclared"]
    assert "an output has none" in entry["reason"]
