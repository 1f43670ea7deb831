"""Calibration statistics shared by quantization, pruning and fusing: a calibration engine run block
by block (:mod:`.blocks`; the numpy engine, or mlx-lm's own blocks on MLX: :mod:`.mlx_engine`, reached
through :mod:`.mlx_blocks`), the inputs each linear layer sees (:mod:`.statistics`), and their
Hessians, prepared and factorized once per input (:mod:`.hessian`, :mod:`.factor`)."""
