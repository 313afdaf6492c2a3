"""Torch-free code shared by training, export and the service.

- `media`: decoding audio and video with PyAV into the arrays the models take;
- `fusion`: the per-sample fusion rules, in numpy;
- `manifest`, `parity`, `validate`: the model repository's contract (manifest.json), the
  parity rule its graphs are held to, and `mla validate`.

Nothing here imports torch, onnx or the training code, so the serving image carries this
package and not `training/` or `model_export/`.
"""
