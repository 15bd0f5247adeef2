#!/usr/bin/env bash
# Set the concurrency pool limits of a Dagster instance ($DAGSTER_HOME). Idempotent.
#   catalog_db      chunk steps writing to the catalog at once (size to the database)
#   classifier      classification steps calling the model at once
#   embedder        embedding steps calling the embedding model at once
#   stats_provider  drains calling the rate-limited stats provider at once
set -euo pipefail
dagster instance concurrency set catalog_db "${CATALOG_DB_POOL_LIMIT:-8}"
dagster instance concurrency set classifier "${CLASSIFIER_POOL_LIMIT:-1}"
dagster instance concurrency set embedder "${EMBEDDER_POOL_LIMIT:-1}"
dagster instance concurrency set stats_provider "${STATS_PROVIDER_POOL_LIMIT:-1}"
