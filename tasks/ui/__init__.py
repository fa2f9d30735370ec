"""recpipe inside the Airflow UI (docs/METHODS.md "Airflow UI plugin"): a FastAPI app the Airflow API
server mounts under /recpipe (registered by plugins/recpipe_ui.py) with the nightly report (latest
and dated), the experiments' readouts, the pools, the models and gates, and the feed explorer.

- `tasks/ui/mount.py`: what the plugin registers (the app built on its first request; the views);
- `tasks/ui/app.py`: the app, its login check (Airflow's own JWT session) and the page shell;
- `tasks/ui/pages.py`: the report files and the pages drawn by the report's section functions;
- `tasks/ui/explorer.py`: one user's feed through the recommendation path, beside their history.
"""
