"""Installs ``streaming_dllm_lm_eval.pth`` beside the package (see ``src/streaming_dllm_lm_eval_hook.py``).

Everything else about the package lives in ``pyproject.toml``. The ``.pth`` file goes into
regular wheels through ``build_py`` and into editable installs through ``editable_wheel``, so the
plain ``lm_eval --model streaming-dllm`` command works after either kind of install.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "streaming_dllm_lm_eval.pth"
PTH_SOURCE = Path(__file__).parent / "src" / PTH


class BuildWithPth(build_py):
    """Copy the startup ``.pth`` file into the build, so a wheel carries it to site-packages."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(PTH_SOURCE), str(Path(self.build_lib) / PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy: same files, plus the startup ``.pth`` at the wheel root."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, wheel, files, mapping) -> None:
        self.inner(wheel, files, mapping)
        wheel.writestr(PTH, PTH_SOURCE.read_bytes())

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.inner.__exit__(*exc)


cmdclass = {"build_py": BuildWithPth}
try:
    from setuptools.command.editable_wheel import editable_wheel

    if hasattr(editable_wheel, "_select_strategy"):

        class EditableWithPth(editable_wheel):
            def _select_strategy(self, *args, **kwargs):
                return _StrategyWithPth(super()._select_strategy(*args, **kwargs))

        cmdclass["editable_wheel"] = EditableWithPth
except ImportError:  # setuptools without PEP 660 editable installs
    pass

setup(cmdclass=cmdclass)
