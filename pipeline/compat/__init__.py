"""Environment glue that keeps upstream libraries importable on CPU-only machines."""
