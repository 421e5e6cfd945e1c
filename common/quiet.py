"""Quiet library output for the command-line tools: one switch, used by every ``lexvla`` command.

transformers draws a progress bar for every weight file it reads or writes ("Loading weights",
"Writing model shards"), and warns through Python's ``warnings`` about deprecated arguments that
our code does not pass itself (peft and transformers calling each other). For a tiny model that
is several bars per command and no information, so the commands turn them off unless asked
(``--verbose``, or a debug log level). Our own progress bars (training, indexing) are tqdm bars
of their own and are not affected. A library user's process is left as it is: only the CLIs call
this.
"""

from __future__ import annotations

import warnings


def quiet_transformers(verbose: bool = False) -> None:
    """transformers' progress bars and info messages off (errors stay), unless ``verbose``."""
    from transformers.utils import logging as hf_logging

    if verbose:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_info()
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
