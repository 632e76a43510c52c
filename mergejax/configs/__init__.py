"""Default configurations of the console commands, shipped with the package (``get_config()`` files
in the ml_collections style; the repository's ``configs/`` reuse them)."""
