"""What both problems share: image files, checkpoints, runtime choices, training plumbing, figures,
errors."""
