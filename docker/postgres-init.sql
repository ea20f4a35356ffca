-- docker/compose.yaml: one PostgreSQL for both servers, each in its own database (both keep an
-- alembic_version table, so they cannot share one). POSTGRES_DB creates `prefect`; this creates `mlflow`.
CREATE DATABASE mlflow;
