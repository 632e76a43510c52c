"""Independent float64 NumPy implementations of the merge methods beyond the paper's four, written from
the papers' formulas and mergekit's documented semantics (not from mergejax's code). Each function
merges one leaf: ``base`` and ``experts`` are NumPy arrays (``base`` None where a method has none)."""
