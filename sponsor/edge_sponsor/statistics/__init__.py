"""The sponsor's estimators on the hospitals' noisy releases, and the report that shows them.

Each hospital's agent releases the blocks of :mod:`agent.packages.release_layout` with Gaussian noise
of a known standard deviation; these modules pool them over sites and carry that noise,
next to the sampling error, into every standard error, confidence interval and test.

* :mod:`.releases`: one site's release read as blocks (values and noise variance per number).
* :mod:`.survival`: grouped Kaplan-Meier per stratum, median survival and follow-up, log-rank.
* :mod:`.table_one`: the descriptive Table 1 per stratum and overall, per site and pooled.
* :mod:`.glm`: logistic regression by DP Newton-Raphson on the sites' score and information
  (dp_glm), with sampling and noise standard errors on the design's and the covariates' scales.
* :mod:`.cox`: a Cox model over sites (dp_glm on the plan's survival grid), weighted or not.
* :mod:`.iptw`: a weighted plan's balance before and after weighting and its adjusted survival.
* :mod:`.report`: the result tree (JSON) and one self-contained HTML page.
"""
