"""Sharing models with other tools: ONNX (onnxruntime, QGIS Deepness) and bioimage.io packages (the Model Zoo)."""
