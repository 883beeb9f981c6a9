"""Sharing models with other tools: ONNX (onnxruntime, QGIS Deepness)."""
