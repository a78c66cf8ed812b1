"""MLflow "models from code" entry point of the segmentation pyfunc.

MLflow stores this file with the model and runs it on loading (instead of unpickling an object);
``set_model`` hands it the model. See :mod:`tcl.serving.pyfunc`.
"""

import mlflow

from tcl.serving.pyfunc import TCLSegmentationModel

mlflow.models.set_model(TCLSegmentationModel())
