"""Library start-up chatter is off by default (errors still show); verbose=true leaves the libraries alone."""

from __future__ import annotations

import logging
import warnings

import pytest

from sposd.logging import LIBRARY_LOGGERS, _ErrorsOnly, _OwnInfoOnly, quiet_libraries


@pytest.fixture
def restore_loggers(monkeypatch):
    for var in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(var, raising=False)
    levels = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    console = logging.StreamHandler()
    logging.getLogger().addHandler(console)  # as Hydra's console handler
    yield console
    logging.getLogger().removeHandler(console)
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.setLevel(levels[name])
        for f in [f for f in lib.filters if isinstance(f, _ErrorsOnly)]:
            lib.removeFilter(f)


def _emit(name: str, level: int) -> bool:
    """Whether a record at `level` from logger `name` would reach its handlers."""
    logger = logging.getLogger(name)
    return bool(logger.filter(logger.makeRecord(name, level, __file__, 1, "m", None, None)))


def test_quiet_by_default(restore_loggers):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries("cpu")
        warnings.warn_explicit("library chatter", FutureWarning, "lib.py", 1, module="somelib")
        warnings.warn_explicit("ours", UserWarning, "sposd/x.py", 1, module="sposd.train")
    assert [str(w.message) for w in seen] == ["ours"]
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    ds = logging.getLogger("DeepSpeed")
    ds.setLevel(logging.INFO)  # as the library does at import: the filter still holds
    assert not _emit("DeepSpeed", logging.WARNING) and _emit("DeepSpeed", logging.ERROR)
    # a child logger logging before its library configured itself (vLLM's triton notice) inherits the level
    assert not logging.getLogger("vllm.triton_utils.importing").isEnabledFor(logging.INFO)
    # the console drops a library's INFO lines on the root logger (a compiler command), keeps sposd's
    record = logging.LogRecord("root", logging.INFO, __file__, 1, "gcc -c test.c", None, None)
    assert not restore_loggers.filter(record)
    assert restore_loggers.filter(logging.LogRecord("sposd.train", logging.INFO, __file__, 1, "m", None, None))
    assert any(isinstance(f, _OwnInfoOnly) for f in restore_loggers.filters)
    restore_loggers.filters.clear()


def test_verbose_leaves_libraries_alone(restore_loggers):
    import os

    quiet_libraries("cpu", verbose=True)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
    assert _emit("DeepSpeed", logging.WARNING)


def test_per_step_deprecation_chatter_is_off_even_when_verbose(restore_loggers):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # no earlier filter hides what this test emits
        quiet_libraries("cpu", verbose=True)
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
