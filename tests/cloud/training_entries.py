"""Training entry points the retraining tests name in recipes (``training_entries:<function>``). They
run in the job's subprocess, which finds this module through ``PYTHONPATH``: import nothing of the tests."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from edgefleet.protocol.training import TrainingRequest


def raises(request: TrainingRequest) -> None:
    print("loading the captured samples")
    raise ValueError(f"labels of {request.model} are inconsistent")


def sleeps(request: TrainingRequest) -> None:
    """Prints its pid, then sleeps far past any test's timeout_s."""
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(600)


def hogs_memory(request: TrainingRequest) -> None:
    blocks = [bytearray(256 * 1024 * 1024) for _ in range(16)]   # 4 GiB, far past the test's memory_mb
    print(len(blocks))


def writes_nothing(request: TrainingRequest) -> None:
    print("done (but no model)")


def writes_garbage(request: TrainingRequest) -> None:
    Path(request.output).write_bytes(b"not a model at all")


def copies_parent(request: TrainingRequest) -> None:
    shutil.copyfile(request.parent, request.output)


not_callable = 42


def writes_other_inputs(request: TrainingRequest) -> None:
    """A valid ONNX model, but of 16 inputs where the parent takes 64."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["probabilities"])], "other",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    Path(request.output).write_bytes(model.SerializeToString())
    onnx.checker.check_model(model)
