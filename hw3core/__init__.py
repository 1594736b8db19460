"""What both problems share: image files, checkpoints, runtime choices, figures, errors."""
