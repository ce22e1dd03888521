"""Deployment side of mutualnet: slicing, ONNX, TensorRT, parity, manifest, runtime.

``export.manifest``, ``export.profiles`` and ``export.runtime`` import neither torch
nor ``mutualnet``: they are what runs on the device.
"""
