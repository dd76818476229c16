"""Exports: ONNX, OpenVINO IR, INT8/FP16 ONNX (``export.quantize``) and TensorRT engines
(``export.trt``), each verified before it lands, with a sidecar ``<artefact>.json``."""
