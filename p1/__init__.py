"""Problem 1: fine-tune a Vision Transformer, predict folders, explain it with attention.

presets (the --model names), model (timm's ViT and its weights), data (folders, transforms, the
decoded-once cache), engine (the optimizer, one epoch, evaluation, fit, prediction), attention
([CLS] maps, rollout, position similarity), figures (their layout); the scripts train,
inference, visualize, export and demo are argparse and a call into those."""
