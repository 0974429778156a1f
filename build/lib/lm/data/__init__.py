"""Data: text sources, tokenization into token streams, packing and grain pipelines."""
