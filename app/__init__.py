"""winq.app: the commands that orchestrate every layer — nothing imports this package.

* ``winq-spectrum`` (:mod:`winq.app.spectrum`): a checkpoint's Hessian spectrum; with no
  ``--ckpt`` it pre-trains the embedded default first, which takes the trainer.
* ``winq-reproduce`` (:mod:`winq.app.study`): the WinQ paper's saddle-point findings end to
  end: FP model, QAT runs (:func:`winq.train.train`), spectra
  (:func:`winq.analysis.measure_spectrum`), figures (:mod:`winq.plots`) and REPORT.md.

The libraries below stand alone: ``winq`` (core), ``winq.analysis`` (estimators, imports the
core), ``winq.train`` (the trainer, imports the core and analysis) and ``winq.plots`` (figures
from saved files, no torch). ``lint-imports`` checks these layers (see setup.cfg).
"""
