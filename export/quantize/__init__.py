"""INT8 and FP16-typed ONNX: ``qdq`` (node choice, activation ranges, the Q/DQ graph),
``calibration`` (SA-1B images at the deployment size, with a held-out split), ``histogram``,
``smooth`` (SmoothQuant outlier migration), ``budget`` (INT8 held to an accuracy budget: the images,
the ONNX path, the report), ``search`` (the budget's method, the same for every path), ``probes``
(Q/DQ layers back in float without quantizing again), ``openvino_int8`` (NNCF within the budget),
``nncf_log`` (NNCF's info lines quieted),
``fp16`` (FP16-typed graphs for strongly typed TensorRT builds), ``options`` (what an INT8
export is asked for) and the ``python -m export.quantize`` command."""
