"""Data stages: Pile shards, deduplication, tokenization, Megatron datasets, sample order."""
