"""teacher_dump — phase 1: run the teacher once over a subset on Ray actors (inference mode,
one teacher per GPU) and write its first-layer attention, projector tokens and sparse output
distributions into the zarr cache through `cache_schema` writers. Never imports student_train."""
