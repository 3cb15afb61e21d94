"""Keeps Hugging Face libraries from printing while the training layer works.

``datasets`` and ``transformers`` draw progress bars and log load reports
(``Loading weights: 100%|...``, a table of missing keys) straight to the
terminal. Library code never prints: the CLI decides what the user sees, from
what the training layer reports. :func:`quiet` turns both libraries' bars and
logs down to errors for the duration of a block and restores their settings
afterwards, and keeps ``datasets`` off the network (local files only).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

__all__ = ["quiet"]


class _ErrorsOnly(logging.Filter):
    """A logging filter passing errors only (one object per :func:`quiet` call, so nested calls nest)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences ``datasets``/``transformers`` progress bars, logs and their warnings inside the block.

    Restores the previous verbosity, progress-bar state and ``datasets``'
    offline flag on exit, so a user's own settings survive a call.
    """
    import datasets
    import datasets.config as dconfig
    import transformers
    from datasets.utils import logging as dlogging
    from datasets.utils.tqdm import are_progress_bars_disabled
    from transformers.utils import logging as tlogging

    d_level, t_level = dlogging.get_verbosity(), tlogging.get_verbosity()
    d_bars = not are_progress_bars_disabled()
    t_bars = tlogging.is_progress_bar_enabled()
    offline = dconfig.HF_HUB_OFFLINE
    # DeepSpeed, imported by accelerate on first use, logs "Setting accelerator to CPU" to stdout through a
    # logger it configures itself (so a level set beforehand is overwritten); a filter on it survives that.
    deepspeed, errors_only = logging.getLogger("DeepSpeed"), _ErrorsOnly()
    deepspeed.addFilter(errors_only)
    try:
        dlogging.set_verbosity_error()
        tlogging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        # Data files are local; a hub lookup would only ever fail slowly (or leak the file name).
        dconfig.HF_HUB_OFFLINE = True
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(transformers|datasets|accelerate)(\.|$)")
            yield
    finally:
        deepspeed.removeFilter(errors_only)
        dconfig.HF_HUB_OFFLINE = offline
        dlogging.set_verbosity(d_level)
        tlogging.set_verbosity(t_level)
        if d_bars:
            datasets.enable_progress_bars()
        if t_bars:
            transformers.utils.logging.enable_progress_bar()
