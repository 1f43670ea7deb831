"""Calibration statistics shared by quantization, pruning and fusing: the numpy engine run block by
block (:mod:`.blocks`), the inputs each linear layer sees (:mod:`.statistics`), and their Hessians,
prepared and factorized once per input (:mod:`.hessian`, :mod:`.factor`)."""
