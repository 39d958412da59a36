"""alignkd checkpoints in a standard benchmark harness (the optional extra `pip install -e '.[harness]'`).

    answer.py      the harness-independent part: a model + tokenizer answering harness requests
                   (context text, images, generation kwargs) through evaluation.heldout's one
                   generation path, so that a harness and `alignkd eval` give the same answers
    lmms_model.py  lmms-eval's model class (`--model alignkd`), registered through the entry point
                   in pyproject.toml (lmms_plugin.py)
    lmms_task.py   `python -m alignkd_harness.lmms_task`: a workflow's held-out split as a local
                   lmms-eval task (task_utils.py: its doc_to_text / doc_to_visual / process_results)

Imports nothing of ours but pipeline (tests/test_import_rules.py); only lmms_model.py and
lmms_plugin.py import lmms_eval.
"""
