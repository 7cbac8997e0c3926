"""Using a trained detector outside training: prediction on image files and export (ONNX, TorchScript)."""
