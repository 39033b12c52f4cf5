"""The one experiment stack: config → plan → run → summarize → report.

``prm benchmark <suite>`` runs a suite: the paper's comparison on real data.

A suite (``configs/bench_<suite>.yaml``) is one dataset: any LETOR/svmlight folder named by
its config (MQ2008's 5 folds, LightGBM's ranking sample), or MovieLens 100K with users. For
each initial ranker it trains every re-ranker (the baselines, PRM-BASE and, where users give
PV, PRM) once per seed, selects each run's epoch on the validation lists, and scores the test
lists. Tables then show

* per model: P@k, MAP@k, NDCG@k as mean ± std over seeds, where one seed's value averages
  the test lists of all folds (each MQ2008 query is a test query in exactly one fold);
* paired t-tests on per-list values averaged over seeds, against the initial ranking and
  against the best baseline (highest mean validation NDCG@10: chosen without the test lists);
* with ``tuning`` set, each re-ranker is trained with every configuration of its grid (the
  same number for all) and the one with the best mean validation value is trained with every
  seed and reported; with ``losses``, the same for the list loss alone;
* on ranking folders, the initial ranker trained on all training queries as a reference row,
  and NDCG over the full query beside the cut list (with TREC run files for trec_eval);
* ablations: PRM variants (no PE, heads, blocks, list loss, pre-training model, no PV).
* with ``clicks`` set (LETOR sets), the semi-synthetic unbiased learning-to-rank check instead:
  position-biased clicks are simulated on the training and validation lists
  (:mod:`prm.data.click_simulation`) and PRM-BASE is trained on naive clicks, on clicks
  weighted by the true or an estimated inverse examination (IPS), and on the expert labels; each
  click-trained row selects its epochs (and loss) on its own kind of validation clicks, never on
  labels, and the test lists are always scored against the expert labels.

Lists without a relevant item are excluded from every average and test
(:func:`prm.evaluation.metrics.lists_with_click`): every ordering scores 0 on them.

Every finished run is recorded in the work folder (key: a hash of everything it depends on),
so ``resume=True`` continues an interrupted suite, and identical rows (an ablation's default
variant is the main table's PRM-BASE) are trained once.

The demo (:mod:`prm.experiments.demo`, ``prm demo`` or ``prm benchmark demo``) is the
simulator's suite: the same summaries (mean ± std over seeds, paired tests) with the true
expected clicks as its metric, and the same check of the figures a config expects.
"""
