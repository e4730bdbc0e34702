"""Choosing each next token: the sampler per row (sampler.py), the probabilities kept with a reply
(logprobs.py), and stop strings matched across tokens and chunks (stopping.py). Pure functions and small
classes over tensors; imported by the engine.
"""
