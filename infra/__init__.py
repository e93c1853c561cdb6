"""Tracking, storage, the Ray cluster and jobs.

Settings of the libraries the project drives that must be made before they are first imported (this
package is imported before Ray by every entry point: the CLI, the Ray job's driver):
- Ray prints a worker's output on the driver behind a coloured "(RayTrainWorker pid=...)" prefix;
  the project's own lines say which rank and step they come from, so the prefix goes.
- MLflow logs at INFO ("Creating initial MLflow database tables...", the system metrics monitor's
  start and stop, every input example validated): its warnings and errors stay.
"""

import os

os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
