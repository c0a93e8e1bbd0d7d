"""Looking at a collection as a whole: duplicates, zero-shot tags, clusters and their map, evaluation."""
