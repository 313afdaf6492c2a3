"""Export (torch): one ONNX graph per modality with its preprocessing inside, proven equal to torch on real inputs.

The manifest it writes, and the parity and validation rules, live in `common/`: the service reads them
without this package.
"""
