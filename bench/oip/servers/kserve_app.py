"""An ONNX model on KServe's own Python model server (``kserve`` on PyPI): the ImageNet one,
or the protocol-overhead benchmark's trivial one (``--model_path`` says which file).

Run in its own virtualenv by ``bench/oip/run.py``; Sluiceway is not imported. Written the way
KServe's custom-model documentation shows it: a ``kserve.Model`` whose ``predict`` takes a v2
``InferRequest`` and returns an ``InferResponse`` (binary outputs when asked). KServe's Python
server has no batcher for the v2 protocol; for throughput on a CPU it runs several uvicorn
worker processes (``--workers``), here one per core with one ONNX Runtime thread each.
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve import model_server as kserve_model_server


# kserve is installed only in this server's own virtualenv (bench/oip/run.py), so mypy sees
# its Model as Any.
class OnnxImageNet(Model):  # type: ignore[misc]
    """The ONNX file in an ONNX Runtime session; one request per ``run``, its first output
    answered under the file's own name (``logits`` for ImageNet, ``y`` for the trivial one)."""

    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.load()

    def __getstate__(self) -> dict[str, object]:
        # With several workers KServe pickles the model into each process: a session cannot
        # be pickled, so each process opens its own.
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.ready = True
        return True

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        batch = payload.inputs[0].as_numpy()
        (result,) = self.session.run(None, {self.input: batch})
        # Binary outputs when the request asks for them (``binary_data_output``, as the
        # ImageNet runs do), JSON otherwise, as the protocol says.
        binary = payload.use_binary_outputs
        output = InferOutput(self.output, list(result.shape), "FP32")
        output.set_data_from_numpy(result, binary_data=binary)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[output],
            use_binary_outputs=binary,
        )


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve_model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serve_grpc", action="store_true", help="gRPC on --grpc_port too")
    args, _ = parser.parse_known_args()
    model = OnnxImageNet(args.model_name, args.model_path, args.threads)
    ModelServer(
        http_port=args.http_port,
        workers=args.workers,
        enable_grpc=args.serve_grpc,
        grpc_port=args.grpc_port,
    ).start([model])


if __name__ == "__main__":
    main()
