"""Text: corpora and their train/eval split, chat rendering, tokenising and packing into contexts."""
