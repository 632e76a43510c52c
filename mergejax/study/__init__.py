"""The paper's study as one program: grid, split-safe selection, resumable results, report."""
