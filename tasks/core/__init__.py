"""Shared foundations: config, contract, lake and warehouse, artifacts and the model registry, atomic writes, the dbt runner, day resolution, offline metric formulas."""
