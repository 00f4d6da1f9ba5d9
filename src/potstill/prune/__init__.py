"""A student initialized from the teacher by pruning (``student.init: prune``), Minitron-style.

Muralidharan et al. 2024 ("Compact Language Models via Pruning and Knowledge Distillation") and
Sreenivas et al. 2024 ("LLM Pruning and Distillation in Practice"): measure the importance of the
teacher's layers, hidden channels, attention heads and MLP channels from its activations on a
small calibration set, keep the most important ones, then recover the loss with KD.

- ``settings``: :class:`PruneSettings` (target sizes, calibration) and the student's :class:`Shape`;
- ``calibration``: chat records / token ids -> batches;
- ``importance``: forward hooks -> scores (one pass, no gradients);
- ``slicing``: choose the kept indices, cut the state dict and the config;
- ``run``: :func:`~.run.prune_model`, which writes a plain HF model directory plus ``prune.json``.


The package itself imports nothing (``potstill.config`` reads :mod:`.settings` alone); the stage is
:mod:`.stage` (the run directory's ``student/`` folder).
"""
