"""student_train — phase 2: train the MobileVLM V2 student with DeepSpeed ZeRO-2 from the cached
teacher targets (Align-KD losses: first-layer attention, focus/all vision tokens, reverse KL,
supervised CE), then export it in the original MobileVLM layout. Never imports teacher_dump."""
