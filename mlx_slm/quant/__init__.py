"""Calibrated quantization: calibration data, activation statistics, imatrix and GPTQ."""
