"""LIBERO: the benchmark VLA-Adapter was trained and evaluated on (optional: pip install -e '.[libero]')."""
