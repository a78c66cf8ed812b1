"""Orchestration entry points: ``python -m pipelines.run`` (what ``make run`` runs: ``dvc repro`` under
one MLflow parent run), the Prefect flow (``pipelines.flow``) and its scheduled deployment
(``python -m pipelines.serve``, or ``prefect deploy`` with ``prefect.yaml``)."""
