"""Content pools: declared in the config, rendered by dbt, checked by GX, published by a pointer."""
