"""The executor the sensor asks for, by file size."""

from __future__ import annotations

from catalog_pipeline.jobs import executor_run_config

MIB = 1 << 20


def _multiprocess(config: dict) -> dict:
    return config["execution"]["config"]["multiprocess"]


def test_files_of_up_to_three_chunks_run_in_process():
    assert executor_run_config(3 * 64 * MIB, 64 * MIB, cores=8) == {
        "execution": {"config": {"in_process": {}}}
    }


def test_large_files_run_a_step_per_core_plus_one():
    config = _multiprocess(executor_run_config(1300 * MIB, 64 * MIB, cores=2))
    assert config["max_concurrent"] == 3
    assert "forkserver" in config["start_method"]


def test_never_more_concurrent_steps_than_chunks():
    # Four chunks on a 16-core machine: four steps, not seventeen.
    assert (
        _multiprocess(executor_run_config(4 * 64 * MIB, 64 * MIB, cores=16))["max_concurrent"] == 4
    )


def test_steps_can_be_set_outright():
    config = executor_run_config(1300 * MIB, 64 * MIB, cores=2, steps=1)
    assert _multiprocess(config)["max_concurrent"] == 1
