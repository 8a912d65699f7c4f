"""The composition root: the ``hwcost`` command line and the main job. It sits above every
package of the library and composes them; no library module imports it.

Thin: each command opens the store, calls one library function and formats its result.
Heavy packages are imported inside commands, so ``hwcost --help`` starts fast.
"""

import lazy_loader

__getattr__, __dir__, _ = lazy_loader.attach(
    __name__, submod_attrs={"main": ["cli"],
                            "main_job": ["MainJobOptions", "RunSummary", "run_main_job"]})

__all__ = ["cli", "MainJobOptions", "RunSummary", "run_main_job"]
