"""Problem 1: fine-tune a Vision Transformer, predict folders, explain it with attention."""
