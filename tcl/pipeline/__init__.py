"""Pipeline plumbing shared by ``stages/``, ``pipelines/`` (Prefect) and ``make run``.

``tcl.pipeline.config``: the ``download`` and ``pipeline`` sections of ``params.yaml``;
``tcl.pipeline.overrides``: ``-S key=value`` overrides, validated before anything runs;
``tcl.pipeline.dvc_cli``: running DVC stages as subprocesses with streamed output;
``tcl.pipeline.runs``: the MLflow parent run of one pipeline execution;
``tcl.pipeline.lock``: one pipeline run per checkout (an OS file lock held for the whole run);
``tcl.pipeline.guard``: the process between an orchestrator and DVC that stops DVC's whole tree with it.
Submodules are imported explicitly (``tcl.config`` imports ``tcl.pipeline.config``, so this package
must not import anything that imports ``tcl.config`` back).
"""

__all__: list[str] = []
