# The recpipe Airflow image: every Airflow service of docker-compose.yml runs it.
# The official Airflow image (same Airflow and Python as constraints.txt) with the project installed
# from the frozen constraints, plus the `deploy` extra: the PostgreSQL driver, the FAB auth manager
# and the CeleryExecutor. Nothing is installed at container start.
FROM apache/airflow:3.3.2-python3.11

# CPU-only torch (torch==2.13.0 in constraints.txt; this index serves 2.13.0+cpu, which satisfies it).
# Without it pip takes the CUDA build from PyPI, several GB of GPU libraries this image never uses.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

# Where the project lives in the image; docker-compose.yml mounts dags/, dbt/ and config/ over the
# copies below and the data volume (lake, warehouse, alerts, reports) on /opt/recpipe/data.
ENV RECPIPE_CONFIG=/opt/recpipe/config/recpipe.yaml \
    RECPIPE_DATA_DIR=/opt/recpipe/data \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/recpipe/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/recpipe/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

USER root
# Group 0 owns and may write everything, so the image runs under any UID with GID 0 (AIRFLOW_UID).
RUN mkdir -p /opt/recpipe/data /opt/recpipe/dbt \
    && chown -R airflow:0 /opt/recpipe \
    && chmod -R g+rwX /opt/recpipe
USER airflow
WORKDIR /opt/recpipe

# The project, installed editable: tasks/ finds dbt/ and dags/ beside it in /opt/recpipe, not in
# site-packages (rebuild the image when tasks/, models/ or expectations/ change).
COPY --chown=airflow:0 constraints.txt pyproject.toml README.md ./
COPY --chown=airflow:0 tasks/ tasks/
COPY --chown=airflow:0 models/ models/
COPY --chown=airflow:0 expectations/ expectations/
RUN pip install --no-cache-dir -c constraints.txt -e ".[deploy,s3]"

# Files read at run time (compose mounts the working tree's dags/ and config/ over them, and dbt/
# on /opt/recpipe/dbt).
COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 dbt/ dbt/
COPY --chown=airflow:0 config/ config/
COPY --chown=airflow:0 scripts/airflow-init.sh scripts/airflow-init.sh
