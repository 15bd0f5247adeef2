"""`catalog_automation_sensor`: evaluates the assets' automation conditions (the catalog audit
after ingests settle, classifications after each ingest). On by default; Dagster's own default
automation sensor starts stopped, which would silently leave those conditions unevaluated."""

import os

import dagster as dg

AUTOMATION_INTERVAL_SETTING = "CATALOG_AUTOMATION_INTERVAL_SECONDS"

catalog_automation_sensor = dg.AutomationConditionSensorDefinition(
    "catalog_automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(AUTOMATION_INTERVAL_SETTING, "30")),
    description="Requests runs for assets whose automation condition is met.",
)
