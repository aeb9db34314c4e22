"""netvlad-kit export: ONNX with a model card, INT8 QDQ and FP16 variants, TensorRT engines, parity gate."""
