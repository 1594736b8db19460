"""Problem 2: captioning images with CATR and showing where each word looked.

configs (CATR's configuration, the --config presets), model (CATR, its cached and static-cache
decoding), data (preprocessing, caption files, synthetic scenes), decode (greedy, static-cache
and beam search, word maps), engine (one epoch, evaluation, fit), metrics, tokenizer, figures
(the caption figure); the scripts train, inference, visualize and demo are argparse and a call
into those."""
