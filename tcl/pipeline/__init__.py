"""The ``download`` and ``pipeline`` sections of ``params.yaml`` (``tcl.pipeline.config``).

The orchestration code that reads them lives outside the library, in ``pipelines/`` and ``stages/``.
"""

__all__: list[str] = []
