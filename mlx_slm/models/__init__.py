"""Model code mlx-lm does not provide: the numpy forward pass of the Llama family."""
