"""lm-evaluation-harness: the `lahis_hf` model type (models.py), the task folder (tasks/) and the Python
side of its tasks (task_utils.py), and running lm_eval in-process (runner.py). Registration without an
import happens through the top-level `_lahis_register` module (a .pth hook)."""
