"""Synthetic edit pairs for SmartEdit's complex-understanding and reasoning scenarios (Reason-Edit categories).

Stages, one file each, every one a generator over typed items that passes `Reject`s through:
leakage guard → scene analysis → scenario selection → instructions (the plan, cheap, see build.py);
then per shard: paraphrase (optional LLM) → masks (SAM or annotation) → editors → quality filters → samples.
"""
