"""An ONNX model as a Seldon MLServer custom runtime (``mlserver`` on PyPI): the ImageNet one,
or the protocol-overhead benchmark's trivial one (the ``uri`` parameter says which file).

Run in its own virtualenv by ``bench/oip/run.py``, which writes MLServer's ``settings.json``
and ``model-settings.json`` beside it: adaptive batching on (``max_batch_size``,
``max_batch_time``) and ``parallel_workers`` inference processes, one per core, each with one
ONNX Runtime thread, as MLServer's documentation describes for CPU-bound models. MLServer's REST
API reads JSON tensors only (no binary extension), so it is sent JSON.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


# mlserver is installed only in this server's own virtualenv (bench/oip/run.py), so mypy sees
# its MLModel as Any.
class OnnxImageNet(MLModel):  # type: ignore[misc]
    """The ONNX file in an ONNX Runtime session; a batch of requests per ``run``, its first
    output answered under the file's own name (``logits`` for ImageNet, ``y`` for the trivial
    one)."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        assert parameters is not None and parameters.uri is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = NumpyCodec.decode_input(payload.inputs[0])
        (result,) = self.session.run(None, {self.input: batch})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self.output, result)]
        )
