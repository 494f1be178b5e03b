"""
Building the planner and loading its model, retrying a failure that may pass.

:func:`load` builds the planner from the settings (it checks commands from then on) and loads
its model. A failure that may pass (``transient``: a remote server down or overloaded) is
tried again after 1 s, then 2, 4, ... up to 30 s, until the model loads or ``stop`` is set;
any other failure ends the load. It runs on the worker's thread: a load cannot be
interrupted, so whoever waits for it waits on ``stop`` as well.
"""

import threading
from typing import Callable, Optional

from robot_llm_planner.core.backend import EngineError
from robot_llm_planner.core.fingerprint import fingerprint
from robot_llm_planner.core.settings import PlannerSettings, split_adapters
from robot_llm_planner.serving.state import Failure, Served

MODEL_LOAD_FAILED = 'model_load_failed'
LOAD_RETRY_S = 1.0
LOAD_RETRY_MAX_S = 30.0


def requested(settings: PlannerSettings) -> Served:
    """Return what the settings ask to serve, named as answers name it before it is built."""
    if settings.backend == 'openai':
        return Served({'backend': 'openai', 'base': settings.remote_base_url,
                       'adapter': settings.remote_model})
    return Served({'backend': settings.backend, 'base': settings.model_path,
                   'adapter': ','.join(split_adapters(settings.adapter_path))})


def load(settings: PlannerSettings, stop: threading.Event, built: Callable[[object], None],
         failed: Callable[[Failure], None]) -> Optional[Served]:
    """
    Build and load the planner; return what it serves, or None if it did not load.

    :param settings: what to serve (:func:`~robot_llm_planner.inference.build.build_planner`).
    :param stop: set to give up: a retry is not waited for, a model loaded meanwhile is dropped.
    :param built: called with each planner built, before its model loads.
    :param failed: called with each failure; ``Failure.retrying`` says whether it is tried again.
    """
    from robot_llm_planner.inference.build import build_planner
    retry_s = LOAD_RETRY_S
    while True:
        try:
            planner = build_planner(settings)
            built(planner)
            planner.load()
            break
        except Exception as exc:  # EngineError, SkillError, ValueError or a library failure
            detail = str(exc) if isinstance(exc, (EngineError, ValueError)) \
                else '%s: %s' % (type(exc).__name__, exc)
            if not getattr(exc, 'transient', False):
                failed(Failure('cannot load the model: %s' % detail, MODEL_LOAD_FAILED))
                return None
            # e.g. the remote server is down: say so, and try again
            failed(Failure('cannot load the model: %s; retrying in %.0f s' % (detail, retry_s),
                           MODEL_LOAD_FAILED, retrying=True))
            if stop.wait(retry_s):
                return None
            retry_s = min(2 * retry_s, LOAD_RETRY_MAX_S)
    if stop.is_set():
        return None  # shut down while loading
    placement = planner.backend.placement()
    hashes = {'base': '', 'adapter': ''}
    if settings.backend == 'transformers':
        hashes = {'base': fingerprint(settings.model_path),
                  'adapter': fingerprint(settings.adapter_path)}
    return Served(planner.backend.describe(), placement['device'], placement['dtype'], hashes)
