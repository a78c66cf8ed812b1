"""Pipeline plumbing shared by ``stages/``, ``pipelines/`` (Prefect) and ``make run``.

``tcl.pipeline.config``: the ``download`` and ``pipeline`` sections of ``params.yaml``;
``tcl.pipeline.overrides``: ``-S key=value`` overrides, validated before anything runs;
``tcl.pipeline.dvc_cli``: running DVC stages as subprocesses with streamed output;
``tcl.pipeline.runs``: the MLflow parent run of one pipeline execution.
Submodules are imported explicitly (``tcl.config`` imports ``tcl.pipeline.config``, so this package
must not import anything that imports ``tcl.config`` back).
"""

__all__: list[str] = []
