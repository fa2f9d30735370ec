"""Airflow wiring shared by the DAG files, and running DAGs locally."""
