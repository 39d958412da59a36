"""pipeline — what both phases share and what comes before them: the MobileVLM V2 model family
(LLaMA LLM, CLIP tower, LDPv2 projector, checkpoint I/O in the original layout, first-layer
attention capture), conversation templates, the index sets the losses use, the teacher-output
reductions, workflow configuration, fingerprints and the manifest builder.

Every module here is imported by teacher_dump, student_train or the manifest builder
(tests/test_import_rules.py); what only the commands use lives with them: `evaluation`, `alignkd`,
`toy_world`, `benchmarks`."""
