"""What both problems share, nothing problem-specific: image files (images), checkpoints, atomic
files (files), device and cores (runtime), the run skeleton of training (training), figures, the
command line (cli), the two exceptions a run ends with (errors), synthetic scenes (scenes)."""
