"""Independent float64 NumPy implementations of the merge methods beyond the paper's four, written from
the papers' formulas and mergekit's documented semantics (not from mergejax's code): one leaf at a time
(spherical, sparse, stock, subspace, lines), or whole small models whose layer inputs, Fisher and
entropy gradients are written out by hand (data_aware)."""
