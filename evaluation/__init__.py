"""evaluation — scoring trained models, used by the commands (`alignkd eval`, `alignkd probe`, demo and
reproduce reports), the benchmark-harness model class and the benchmarks; never by the phases.

    heldout      batched greedy generation and exact-match scoring on held-out records
    paired       paired bootstrap intervals for accuracy differences on one question set
    transfer     what a student took from its teacher: answer-token reverse KL, attention agreement
    layer_probe  the paper's §3.1 layer probe (Figure 2 a–c)

Imports only `pipeline` (tests/test_import_rules.py).
"""
