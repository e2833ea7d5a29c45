"""Only what pyproject.toml cannot say: install `lahis_ctrl_lm_eval.pth` into site-packages.

That one-line .pth registers the `lahis_hf` / `lahis_vllm` model types with lm-eval when lm-eval's
registry is imported (see _lahis_register.py; opt out with LAHIS_NO_LM_EVAL_HOOK=1). A .pth is only
read from site-packages itself, so it must sit at the root of the wheel, next to the packages:
  * regular wheels: the root of build_lib becomes the wheel's root;
  * editable installs (PEP 660): setuptools puts only its finder/.pth files and the "unpacked wheel"
    directory (install_lib) into the editable wheel, not build_lib, so the file is written there too.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "lahis_ctrl_lm_eval.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        src = os.path.join(HERE, PTH)
        self.copy_file(src, os.path.join(self.build_lib, PTH), preserve_mode=0)
        if getattr(self, "editable_mode", False):
            install = self.get_finalized_command("install")
            self.copy_file(src, os.path.join(install.install_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
