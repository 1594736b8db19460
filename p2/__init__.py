"""Problem 2: captioning images with CATR and showing where each word looked."""
