"""Export: one ONNX graph per modality, parity checks, the manifest (see the export issue)."""
