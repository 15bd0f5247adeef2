"""`catalog_executor`'s one decision: in process for small objects, forked chunk steps
for large ones, whatever launched the run."""

from __future__ import annotations

from catalog_pipeline.executor import IN_PROCESS, MULTIPROCESS, choose_execution

MIB = 1 << 20


def test_files_of_up_to_three_chunks_run_in_process():
    execution = choose_execution(3 * 64 * MIB, 64 * MIB, cores=8)
    assert (execution.mode, execution.max_concurrent) == (IN_PROCESS, None)
    assert "3 chunks" in execution.reason


def test_an_object_of_unknown_size_runs_in_process():
    assert choose_execution(None, 64 * MIB).mode == IN_PROCESS


def test_large_files_run_a_step_per_core_plus_one():
    execution = choose_execution(1300 * MIB, 64 * MIB, cores=2)
    assert (execution.mode, execution.max_concurrent) == (MULTIPROCESS, 3)


def test_never_more_concurrent_steps_than_chunks():
    # Four chunks on a 16-core machine: four steps, not seventeen.
    assert choose_execution(4 * 64 * MIB, 64 * MIB, cores=16).max_concurrent == 4


def test_steps_can_be_set_outright():
    assert choose_execution(1300 * MIB, 64 * MIB, steps=1).max_concurrent == 1


def test_multiprocess_can_be_forced_for_a_small_file():
    execution = choose_execution(10 * MIB, 64 * MIB, multiprocess=True, cores=2)
    assert (execution.mode, execution.max_concurrent) == (MULTIPROCESS, 1)
