"""Training backends: the PyTorch loop and the GPT-NeoX launcher."""
