"""rnnlm/metrics.py: the TensorBoard writer writes what it is given, hides the steps a resume logs again, and
the null writer writes nothing."""

import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from rnnlm.metrics import NullWriter, open_writer


def logged(run_dir, tag):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = open_writer(tmp_path / "run", enabled=False, purge_step=3)
    assert isinstance(writer, NullWriter)
    writer.add_scalar("train/loss", 1.0, 1)
    writer.flush()
    writer.close()
    assert not (tmp_path / "run").exists()


def test_the_writer_logs_each_value_at_its_step(tmp_path):
    writer = open_writer(tmp_path, enabled=True)
    for step, value in [(1, 4.5), (2, 4.25), (5, 3.0)]:
        writer.add_scalar("train/loss", value, step)
    writer.add_scalar("val/loss", 3.5, 5)
    writer.close()
    assert logged(tmp_path, "train/loss") == [(1, 4.5), (2, 4.25), (5, 3.0)]
    assert logged(tmp_path, "val/loss") == [(5, 3.5)]


def test_a_resumed_writer_hides_the_earlier_events_from_its_purge_step_on(tmp_path):
    first = open_writer(tmp_path, enabled=True)
    for step in range(1, 6):  # a run that logged steps 1-5, then crashed after its checkpoint at step 3
        first.add_scalar("train/loss", float(step), step)
    first.close()
    time.sleep(1.0 - time.time() % 1.0 + 0.01)  # event files sort by the second they were opened in
    resumed = open_writer(tmp_path, enabled=True, purge_step=4)
    for step in (4, 5, 6):
        resumed.add_scalar("train/loss", 10.0 * step, step)
    resumed.close()
    assert logged(tmp_path, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    # the purge is written down, so every TensorBoard reader applies it (not only one that spots the restart)
    first_file, second_file = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert purges(first_file) == [] and purges(second_file) == [4]


def purges(path):
    """The steps from which an event file tells readers to drop the earlier files' events."""
    return [event.step for event in EventFileLoader(str(path)).Load()
            if event.HasField("session_log") and event.session_log.status == event.session_log.START]
