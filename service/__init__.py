"""The FastAPI service: uploads in, entropy-fused predictions out. Imports neither torch, onnx, `training` nor `model_export`."""
