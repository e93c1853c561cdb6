"""What every training step's MLflow run holds about speed: samples/s, model FLOP/s and MFU at
each log step (training/callbacks.py MetricsLog)."""


def assert_mfu_logged(client, run_id: str) -> None:
    mfu = client.get_metric_history(run_id, "mfu")
    tflops = {m.step: m.value for m in client.get_metric_history(run_id, "model_tflops_per_s")}
    rate = {m.step: m.value for m in client.get_metric_history(run_id, "samples_per_s")}
    assert mfu and set(tflops) == set(rate) == {m.step for m in mfu}, run_id
    for m in mfu:
        assert 0.0 < m.value < 1.5, (run_id, m.step, m.value)  # of a peak measured on the same cores
        assert tflops[m.step] > 0 and rate[m.step] > 0
