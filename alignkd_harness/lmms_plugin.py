"""The entry point lmms-eval reads (group `lmms_eval.models` in pyproject.toml): registers
`--model alignkd` without importing the model (torch, transformers) until it is asked for."""

from __future__ import annotations


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest  # only under lmms-eval

    return ModelManifest(model_id="alignkd", simple_class_path="alignkd_harness.lmms_model.AlignKDMobileVLM",
                         aliases=("alignkd_mobilevlm",))
