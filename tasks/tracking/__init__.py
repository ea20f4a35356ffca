"""MLflow: the run, the store, registered versions, the champion, reports and the model card."""
