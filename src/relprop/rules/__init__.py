"""Relevance rules: pure functions (layer geometry, input activation, output relevance) -> input relevance.

Every tensor argument is batched: dimension 0 is the sample, and every reduction inside a rule
is per sample.
"""
