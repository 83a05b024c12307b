"""Calibration streams batches: memory is bounded by the batch, not by the number of samples."""

from __future__ import annotations

import numpy as np

from edgefleet.compression import quantize_onnx
from edgefleet.compression.config import CalibrationConfig, CalibrationMethod
from edgefleet.compression.onnx_graph import gemm_to_matmul, load_onnx, normalise


def test_batch_reader_hands_out_one_batch_at_a_time():
    data = np.arange(100 * 4, dtype=np.float32).reshape(100, 4)
    assert len(quantize_onnx.BatchReader("x", data, 32, limit=50)) == 2
    reader = quantize_onnx.BatchReader("x", data, 32, limit=1000)
    assert len(reader) == 4
    reader.set_range(start_index=3, end_index=4)
    assert reader.get_next()["x"].shape == (4, 4)  # the last, partial batch
    assert reader.get_next() is None
    reader.rewind()
    assert [reader.get_next()["x"].shape[0] for _ in range(4)] == [32, 32, 32, 4]


def test_static_calibration_reads_a_memory_mapped_file_batch_by_batch(tmp_path, monkeypatch,
                                                                      samples, run_model):
    model, calibration, eval_x, eval_y = samples["mlp"]
    path = tmp_path / "calibration.npy"
    np.save(path, calibration)
    mapped = np.load(path, mmap_mode="r")
    largest = []
    original = quantize_onnx.BatchReader.get_next

    def spy(self):
        batch = original(self)
        if batch is not None:
            largest.append(len(batch["input"]))
        return batch

    monkeypatch.setattr(quantize_onnx.BatchReader, "get_next", spy)
    graph = gemm_to_matmul(normalise(load_onnx(model)))
    for method in CalibrationMethod:
        quantized = quantize_onnx.quantize_static_int8(
            graph, mapped, config=CalibrationConfig(method=method, batch_size=16,
                                                    max_samples=len(calibration)),
            per_channel=True, exclude=[])
        accuracy = (run_model("onnx", quantized, eval_x).argmax(1) == eval_y).mean()
        assert accuracy > 0.95
    assert max(largest) == 16
    assert sum(largest) == 3 * len(calibration)  # every sample seen once per method
