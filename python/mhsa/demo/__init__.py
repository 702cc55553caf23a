"""A trained, visual demonstration of multi-head self-attention with mhsa's own operator.

Run it with ``scripts/demo`` (which sets up and builds everything first) or, once built,
``python -m mhsa.demo [--steps N] [--seed S] [--threads T] [--out DIR] [--quick]``.

The task: a sequence of 16 digits; at every position i >= 1 the model must output

    (token[i-1] + number of 0s among token[0..i]) mod 10

so it needs two different kinds of attention: a sharp one that fetches the previous token, and
a broad one that looks over the whole prefix to count the zeros. A one-layer, two-head causal
transformer built on ``mhsa.MultiheadSelfAttention`` learns it, and usually gives one job to
each head.

The identical model built on ``torch.nn.MultiheadAttention`` (same initial weights, copied with
``load_state_dict``; same data in the same order) is trained in lockstep, to show that the two
loss curves coincide and to compare the time per training step.

Written to the output folder:

* ``attention-layer<l>.png`` - each head's attention weights on one held-out example;
* ``loss.png`` - the training loss of both runs and their difference;
* ``model.pt`` - the trained mhsa model as TorchScript: LongTensor (N, L) -> logits (N, L, V);
* ``report.md`` - the pictures, plus one line per head saying what it attends to, measured
  on held-out data;
* ``report.html`` - one self-contained page: pick a layer, a head and a query token and see
  that head's attention over the input tokens, beside the two loss curves;
* ``summary.json`` - accuracies, timings, the largest loss difference, the head roles
  (``dataclasses.asdict`` of :class:`mhsa.demo.summary.Summary`).

One module per job:

* :mod:`mhsa.demo.task` - the synthetic task and its batches;
* :mod:`mhsa.demo.model` - the tiny transformer (mhsa or nn.MultiheadAttention attention);
* :mod:`mhsa.demo.train` - the lockstep training loop (tqdm progress);
* :mod:`mhsa.demo.analysis` - what each head attends to, measured on held-out data;
* :mod:`mhsa.demo.summary` - the typed results record behind summary.json;
* :mod:`mhsa.demo.report` - the PNGs and report.md;
* :mod:`mhsa.demo.html_report` - report.html (template: ``report_template.html``);
* :mod:`mhsa.demo.cli` - the command line, which runs all of the above in order.
"""

from mhsa.demo.cli import main

__all__ = ["main"]
