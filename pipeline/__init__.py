"""pipeline — what both phases share and what comes before them: the MobileVLM V2 model family
(LLaMA LLM, CLIP tower, LDPv2 projector, checkpoint I/O in the original layout, first-layer
attention capture), conversation templates, the index sets the losses use, the teacher-output
reductions, workflow configuration, the manifest builder and the toy world."""
