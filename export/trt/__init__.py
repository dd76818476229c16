"""TensorRT engines: ``decisions`` (release-dependent decisions, no TensorRT needed), ``rules`` (each
release's ONNX parser rules as data), ``build`` (the pipeline, as steps that hand records down),
``engine`` (the TensorRT and GPU calls) and the ``python -m export.trt`` command. Python 3.8
clean: it runs on JetPack 5."""
