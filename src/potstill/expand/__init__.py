"""The expand stage: grow a small set of training prompts before distilling (train split only).

Rule-based perturbations (nlpaug typos, character swaps, word dropout; casing and punctuation),
conversational wrappers and multi-question composition from configurable phrase lists, and
writer-model rewrites (paraphrase / Evol-Instruct-style), cached and resumable like teacher answers.
Expansions are deduplicated and kept out of the evaluation splits. See :func:`potstill.expand.run.run_expand`.
The package itself imports nothing: ``potstill.config`` reads :mod:`.config` without loading the rest.
"""
